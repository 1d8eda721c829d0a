"""Stream throughput: records through RecordWriter/RecordReader on the embedded store and on stream manager.

Records arrive in scan batches of 100 (one source, 100 tags); ``RecordWriter`` writes one message per batch. The
streams use ``flush_on_write``, so every batch is durable (fdatasync) before ``write`` returns: the figures are
the cost of a durable batch, not of a page-cache write. Batches are built before timing (they are the collector's
cost). Targets (embedded store): append >= 100,000 records/s, read >= 300,000 records/s.

- ``stream.embedded.append_records_per_s``: ``RecordWriter.write`` (encode + append + fdatasync), wall clock;
- ``stream.embedded.read_records_per_s``: ``RecordReader.poll`` of 100 messages at a time (read + decode) over
  what was written, wall clock;
- ``stream.sqlite.append_records_per_s`` / ``.read_records_per_s``: the reference of issue 18, the same work on
  SQLite (the stdlib ``sqlite3``): the same encoded messages (``encode_messages``, as ``RecordWriter`` makes them),
  one row per message, WAL journal, ``synchronous=FULL``, one commit per batch (so every batch is durable before
  the call returns, as with ``flush_on_write``); read back 100 rows a query by rowid, decoded with ``decode_batch``
  into one list per query (held until the next, as a reader's batch is: the same objects live as long);
- ``stream.embedded.append_ratio_vs_sqlite`` / ``read_ratio_vs_sqlite``: embedded / SQLite speed on the same
  records, over ``ROUNDS`` rounds on fresh files. The two take turns batch by batch (and poll by poll), the first of
  each pair alternating; the ratio is the median over all pairs of SQLite's time / the embedded store's time. A pair
  runs within a millisecond or so under the same load, and the median leaves out the pairs where another process's
  disk burst stalled one side: with whole phases one after the other the same code measured 0.56-0.88, and with
  turns but totals 0.78-0.93. Target >= 1. The records-per-second figures above are totals (records over the sum of
  the side's turns), the rounds' medians;
- ``stream.embedded.append_us_per_batch_median`` / ``stream.sqlite.append_us_per_batch_median``: the median turn of
  each (encode + durable append of 100 records); when another process keeps the disk busy both wait in its queue
  for milliseconds and the ratio tends to 1 whatever the code: read the ratio with these;
- ``stream.stream_manager.append_records_per_s``: the same batches through ``StreamManagerStore`` (the real SDK)
  against the development ``StreamManagerServer`` on 127.0.0.1, which stores into the embedded store; server, SDK
  and benchmark share this machine's cores.

Run ``python bench/bench_streams.py`` to print the figures and the machine's load.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.codec import decode_batch  # noqa: E402
from gateway.record import Record, make_record  # noqa: E402
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec  # noqa: E402
from gateway.streams.base import StreamStore  # noqa: E402
from gateway.streams.batches import encode_messages  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402
from gateway.streams.records import MAX_RECORDS_PER_MESSAGE  # noqa: E402
from gateway.streams.stream_manager import StreamManagerStore  # noqa: E402
from tests.support.stream_manager import ServerThread  # noqa: E402

BATCH = 100
EMBEDDED_BATCHES = 2000  # 200,000 records
SM_BATCHES = 500
ROUNDS = 3  # embedded and SQLite side by side, each round on fresh files
SPEC = StreamSpec(name="bench", max_size_bytes=1024 * 1024 * 1024, flush_on_write=True)


def _batches(n: int) -> list[list[Record]]:
    ts = 1_700_000_000_000_000_000
    return [
        [make_record("plc-1", f"/site/line/tag{t:03d}", float(b * BATCH + t), seq=b * BATCH + t,
                     source_ts_ns=ts + b * 1_000_000_000, gateway_ts_ns=ts + b * 1_000_000_000)
         for t in range(BATCH)]
        for b in range(n)
    ]


def _append_rate(store: StreamStore, batches: list[list[Record]]) -> float:
    store.create_stream(SPEC)
    writer = RecordWriter(store, SPEC.name)
    t0 = time.perf_counter()
    for batch in batches:
        writer.write(batch)
    return writer.records_written / (time.perf_counter() - t0)


def _sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # every commit durable (WAL fsync), as an appended batch is
    db.execute("CREATE TABLE IF NOT EXISTS stream (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    return db


def _sqlite_write(db: sqlite3.Connection, batch: list[Record]) -> int:
    """One batch as RecordWriter.write does it: encoded the same way, durable when it returns."""
    records = 0
    db.execute("BEGIN")
    for payload, count in encode_messages(batch, MAX_RECORDS_PER_MESSAGE):
        db.execute("INSERT INTO stream (payload) VALUES (?)", (payload,))
        records += count
    db.execute("COMMIT")
    return records


class _Writer:
    """One batch per call through RecordWriter, as the collector writes (encode + append + fdatasync)."""

    def __init__(self, writer: RecordWriter, batches: list[list[Record]]) -> None:
        self.writer = writer
        self.batches = iter(batches)

    def write(self) -> int:
        before = self.writer.records_written
        self.writer.write(next(self.batches))
        return self.writer.records_written - before


class _Reader:
    """Polls of 100 messages; each poll's records are held until the next poll (as by a reader that handles them
    meanwhile), on both sides: how long decoded records live changes the garbage collector's work (1.6x)."""

    def __init__(self, reader: RecordReader) -> None:
        self.reader = reader
        self.batch: list[Record] = []

    def poll(self) -> int:
        self.batch = []  # the previous poll's records go before this one decodes, as in _SqliteReader
        self.batch = self.reader.poll(max_messages=100, timeout_s=0).records
        return len(self.batch)


class _SqliteReader:
    """100 rows a query by rowid, decoded into one list per query (held as :class:`_Reader` holds its polls)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.after = 0
        self.batch: list[Record] = []

    def poll(self) -> int:
        self.batch = []
        rows = self.db.execute("SELECT seq, payload FROM stream WHERE seq > ? ORDER BY seq LIMIT 100",
                               (self.after,)).fetchall()
        for seq, payload in rows:
            self.batch.extend(decode_batch(payload))
            self.after = seq
        return len(self.batch)


@dataclass
class _Turns:
    """Records done and seconds taken per turn, of each side."""

    done: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    spent: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))

    def rate(self, side: int) -> float:
        return sum(self.done[side]) / sum(self.spent[side])

    def ratios(self) -> list[float]:
        """Per pair, the second side's time over the first's (the first's speed relative to the second's)."""
        return [b / a for a, b in zip(*self.spent, strict=True)]


def _turns(first: Callable[[], int], second: Callable[[], int], pairs: int) -> _Turns:
    """Run the two ``pairs`` times each, taking turns (who goes first alternates)."""
    out = _Turns()
    sides = (first, second)
    for i in range(pairs):
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            out.done[side].append(sides[side]())
            out.spent[side].append(time.perf_counter() - t0)
    return out


def _round(root: Path, batches: list[list[Record]]) -> tuple[_Turns, _Turns]:
    """Append then read turns of the embedded store (first side) and SQLite, on fresh files."""
    expected = len(batches) * BATCH
    store = EmbeddedStore(root / "embedded")
    db = _sqlite(root / "sqlite.db")
    try:
        store.create_stream(SPEC)
        todo = iter(batches)
        append = _turns(_Writer(RecordWriter(store, SPEC.name), batches).write,
                        lambda: _sqlite_write(db, next(todo)), len(batches))
        reader = _Reader(RecordReader(store, SPEC.name, "bench", PositionStore(root / "pos")))
        read = _turns(reader.poll, _SqliteReader(db).poll, len(batches) // 100)
    finally:
        store.close()
        db.close()
    for what, turns in (("write", append), ("read", read)):
        for side, name in enumerate(("embedded", "SQLite")):
            if sum(turns.done[side]) != expected:
                raise RuntimeError(f"{name} {what}: {sum(turns.done[side])} records, expected {expected}")
    return append, read


def run() -> dict[str, float]:
    """Measure and return the figures named in the module doc."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streams-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        batches = _batches(EMBEDDED_BATCHES)
        rounds: list[tuple[_Turns, _Turns]] = []
        for n in range(ROUNDS):
            (root / f"round{n}").mkdir()
            rounds.append(_round(root / f"round{n}", batches))
        for i, what in enumerate(("append", "read")):
            out[f"stream.embedded.{what}_records_per_s"] = statistics.median(r[i].rate(0) for r in rounds)
            out[f"stream.sqlite.{what}_records_per_s"] = statistics.median(r[i].rate(1) for r in rounds)
            out[f"stream.embedded.{what}_ratio_vs_sqlite"] = statistics.median(
                x for r in rounds for x in r[i].ratios())
        for side, name in enumerate(("embedded", "sqlite")):  # milliseconds here: the disk was busy elsewhere
            out[f"stream.{name}.append_us_per_batch_median"] = 1e6 * statistics.median(
                t for r in rounds for t in r[0].spent[side])

        runner = ServerThread(root / "sm-server")
        try:
            store = StreamManagerStore("127.0.0.1", runner.start(), connect_timeout_s=10)
            try:
                out["stream.stream_manager.append_records_per_s"] = _append_rate(store, batches[:SM_BATCHES])
            finally:
                store.close()
        finally:
            runner.close()
    return out


if __name__ == "__main__":
    load_before = os.getloadavg()
    figures = run()
    for key, value in figures.items():
        print(f"{key}: {value:,.2f}" if "ratio" in key else f"{key}: {value:,.0f}")
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}, cores: {os.cpu_count()}")
