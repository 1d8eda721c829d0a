"""What a collector keeps on disk per connection beside its stream, so that a restart knows what it missed.

Markers. After each successful write the collector keeps, per connection, a small marker
``<store>/state/<component>/<connection>.json`` (the last sequence number and gateway time written; one atomic
replace at most every ``MARKER_INTERVAL_S`` and at stop, not per value or per append: the collector appends as
often as the stream takes it, and the replace costs more than the append). At start the connection's sequence
continues from there, and the gateway time is where the gap record of that start begins (:mod:`gateway.collector`);
after a kill it may begin up to ``MARKER_INTERVAL_S`` early, never late.

Last stored source timestamps. After each append the newest server source timestamp the stream holds is advanced per
tag (:mod:`gateway.sources.laststored`, ``<store>/state/<component>/last_source_ts/<connection>.json``). A connection
that reads its gaps back from its server's history (OPC UA ``backfill``, :mod:`gateway.sources.opcua_history`)
starts there.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gateway.codec import decode_batch
from gateway.errors import CodecError, StreamError
from gateway.fsutil import atomic_write
from gateway.record import Record
from gateway.sources.common import ConnectionBase
from gateway.sources.laststored import LastStored
from gateway.streams import StreamStore

log = logging.getLogger("gateway.collector")

# Sequence numbers a marker reserves ahead of what was written (see ConnectionState.before_append): a restart jumps
# past them.
SEQ_RESERVE = 100_000
# Markers are moved at most this often (and at stop); sequence numbers stay safe through the reservation, which is
# written before the append that needs it.
MARKER_INTERVAL_S = 0.2
# Newest stream messages read back at start, per connection, to catch the per-tag state up (see load_stored)
TAIL_MESSAGES_PER_CONNECTION = 4


def fills_gaps(cfg: ConnectionBase) -> bool:
    """The connection reads what it missed from its server's history (OPC UA ``backfill.enabled``)."""
    backfill = getattr(cfg, "backfill", None)
    return bool(getattr(backfill, "enabled", False))


class ConnectionState:
    """The markers and per-tag timestamps of every connection of one collector (``state_dir`` None: none kept)."""

    def __init__(self, state_dir: Path | None, store: StreamStore, stream: str) -> None:
        self.state_dir = state_dir
        self.store = store
        self.stream = stream
        self.stored: dict[str, LastStored] = {}  # per connection: what the stream holds per tag, across changes
        self._reserved: dict[str, int] = {}  # per connection: the sequence number its marker reserves up to
        self._committed: dict[str, dict[str, Any]] = {}  # per connection: its marker after the last append
        self._marker_due: dict[str, float] = {}  # per connection: when (monotonic) its marker may move again
        self._held: set[str] = set()  # connections whose marker after the last append is not on disk yet

    def before_append(self, name: str, last_seq: int) -> None:
        """Reserve sequence numbers past ``last_seq`` in the marker before an append that would use them.

        A restart continues above the reservation, so a batch that reached the stream after the marker was last
        moved never shares its numbers with what comes after the restart. Reserving blocks keeps that to one extra
        write per :data:`SEQ_RESERVE` records.
        """
        if self.state_dir is not None and last_seq > self._reserved.get(name, -1):
            self._reserved[name] = last_seq + SEQ_RESERVE
            self._write_marker(name, {**self._committed.get(name, {}), "reserved_seq": self._reserved[name]})

    def after_append(self, name: str, records: list[Record]) -> None:
        """Move the per-tag timestamps and the marker over ``records``, which the stream now holds (a kill between
        the append and the marker's move makes the next gap start up to ``MARKER_INTERVAL_S`` early, never late)."""
        stored = self.stored.get(name)
        if stored is not None and stored.advance(records):  # after the append: never ahead of the stream
            stored.save()
        if self.state_dir is not None:
            last = records[-1]
            marker = {"seq": last.seq, "reserved_seq": self._reserved[name], "gateway_ts_ns": last.gateway_ts_ns,
                      "source_ts_ns": last.source_ts_ns, "stream": self.stream}
            self._committed[name] = marker
            now = time.monotonic()
            if now < self._marker_due.get(name, 0.0):
                self._held.add(name)
                return
            self._marker_due[name] = now + MARKER_INTERVAL_S
            self._held.discard(name)
            self._write_marker(name, marker)

    def sync(self) -> None:
        """Write the markers held back since their last move (at stop)."""
        try:
            for name in sorted(self._held):
                self._write_marker(name, self._committed[name])
        except OSError as exc:  # the stop goes on; the reservation still keeps the sequence numbers apart
            log.warning("collector: could not move the markers in %s at stop (%s): the next gap record may start "
                        "up to %.1f s early", self.state_dir, exc, MARKER_INTERVAL_S)
        self._held.clear()

    def _write_marker(self, name: str, marker: dict[str, Any]) -> None:
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # no fsync: the marker must survive a process kill, which the page cache does; after a power cut an older
        # marker only makes the gap start earlier
        atomic_write(self.state_dir / f"{name}.json", json.dumps(marker).encode(), sync=False)

    def read_marker(self, name: str) -> tuple[int, int | None] | None:
        """(the last sequence number that may have been used, when the last value was written or None)."""
        if self.state_dir is None:
            return None
        try:
            data = json.loads((self.state_dir / f"{name}.json").read_bytes())
            used = max(int(data.get("seq", -1)), int(data.get("reserved_seq", -1)))
            if used < 0:
                raise ValueError("no sequence number")
            t1 = data.get("gateway_ts_ns")
            self._committed[name] = data  # kept by the next reservation, so a kill right after it still has t1
            return used, None if t1 is None else int(t1)  # reserved before a first write that never completed
        except FileNotFoundError:
            return None  # never written: the first start of this connection, nothing missed
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("connection %s: marker %s is damaged (%s): no gap record for this start",
                        name, self.state_dir / f"{name}.json", exc)
            return None

    def load_stored(self, name: str, cfg: ConnectionBase, connections: int) -> LastStored:
        """The connection's per-tag state, caught up with its records in the newest messages of the stream: a kill
        between an append and the state's write leaves the file one append behind, and what the stream holds is
        never ahead of the stream (the backfill would otherwise write those values a second time)."""
        if name in self.stored:
            return self.stored[name]
        path = None if self.state_dir is None else self.state_dir / "last_source_ts" / f"{name}.json"
        stored = self.stored[name] = LastStored.load(path)
        if not fills_gaps(cfg) or self.state_dir is None:
            return stored
        try:
            info = self.store.describe(self.stream)
            count = TAIL_MESSAGES_PER_CONNECTION * (connections + 1)  # + 1: the metrics' messages between
            for msg in self.store.read(self.stream, max(info.oldest_seq, info.next_seq - count), max_count=count):
                stored.advance(r for r in decode_batch(msg.payload) if r.source == name)
        except (StreamError, CodecError) as exc:  # the file alone: at worst a few values are written twice
            log.warning("connection %s: the newest messages of stream %s could not be read (%s); the next backfill "
                        "may write the last values before the stop again (same ids)", name, self.stream, exc)
        return stored
