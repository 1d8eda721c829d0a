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
- ``stream.embedded.append_ratio_vs_sqlite`` / ``read_ratio_vs_sqlite``: embedded / SQLite records per second,
  the median of ``ROUNDS`` rounds that run the two side by side (embedded, then SQLite, on fresh files each round),
  so that the machine's load moves both (target >= 1); the embedded figures above are the rounds' medians;
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


def _read_rate(store: StreamStore, positions: Path, expected: int) -> float:
    reader = RecordReader(store, SPEC.name, "bench", PositionStore(positions))
    records = 0
    t0 = time.perf_counter()
    while records < expected:
        batch = reader.poll(max_messages=100, timeout_s=0)
        if not batch.messages:
            break
        records += len(batch.records)
    elapsed = time.perf_counter() - t0
    if records != expected:
        raise RuntimeError(f"read {records} records, wrote {expected}")
    return records / elapsed


def _sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # every commit durable (WAL fsync), as an appended batch is
    db.execute("CREATE TABLE IF NOT EXISTS stream (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    return db


def _sqlite_append_rate(path: Path, batches: list[list[Record]]) -> float:
    db = _sqlite(path)
    try:
        records = 0
        t0 = time.perf_counter()
        for batch in batches:
            db.execute("BEGIN")
            for payload, count in encode_messages(batch, MAX_RECORDS_PER_MESSAGE):
                db.execute("INSERT INTO stream (payload) VALUES (?)", (payload,))
                records += count
            db.execute("COMMIT")
        return records / (time.perf_counter() - t0)
    finally:
        db.close()


def _sqlite_read_rate(path: Path, expected: int) -> float:
    db = _sqlite(path)
    try:
        records, after = 0, 0
        t0 = time.perf_counter()
        while records < expected:
            rows = db.execute("SELECT seq, payload FROM stream WHERE seq > ? ORDER BY seq LIMIT 100",
                              (after,)).fetchall()
            if not rows:
                break
            batch: list[Record] = []  # held until the next query, as a reader's batch is: same object lifetimes
            for seq, payload in rows:
                batch.extend(decode_batch(payload))
                after = seq
            records += len(batch)
        elapsed = time.perf_counter() - t0
    finally:
        db.close()
    if records != expected:
        raise RuntimeError(f"SQLite: read {records} records, wrote {expected}")
    return records / elapsed


def _embedded_round(root: Path, batches: list[list[Record]]) -> tuple[float, float]:
    embedded = EmbeddedStore(root / "embedded")
    try:
        return _append_rate(embedded, batches), _read_rate(embedded, root / "pos", len(batches) * BATCH)
    finally:
        embedded.close()


def run() -> dict[str, float]:
    """Measure and return the figures named in the module doc."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streams-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        batches = _batches(EMBEDDED_BATCHES)
        ours: list[tuple[float, float]] = []
        ref: list[tuple[float, float]] = []
        for n in range(ROUNDS):
            ours.append(_embedded_round(root / f"round{n}", batches))
            db = root / f"round{n}" / "sqlite.db"
            ref.append((_sqlite_append_rate(db, batches), _sqlite_read_rate(db, EMBEDDED_BATCHES * BATCH)))
        for i, what in enumerate(("append", "read")):
            out[f"stream.embedded.{what}_records_per_s"] = statistics.median(o[i] for o in ours)
            out[f"stream.sqlite.{what}_records_per_s"] = statistics.median(r[i] for r in ref)
            out[f"stream.embedded.{what}_ratio_vs_sqlite"] = statistics.median(
                o[i] / r[i] for o, r in zip(ours, ref, strict=True))

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
