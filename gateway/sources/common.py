"""What every collector connection shares: settings, tag mapping, counters and the record emitter (the deadband is
in deadband.py).

A protocol module (opcua.py, modbus.py, opcda.py) only talks to its peer and calls :meth:`Emitter.emit` for every
value it reads (:meth:`Emitter.emit_many` for the values of one reading); everything after that (mapping, deadband,
record ids, batching into the stream) is here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.record import (
    MAX_VALUE_BYTES,
    Flag,
    Kind,
    Quality,
    Record,
    Value,
    normalised,
    now_ns,
    oversize,
    start_seq,
    value_size,
)
from gateway.sources.deadband import Deadband, DeadbandFilter
from gateway.sources.laststored import LastStored

log = logging.getLogger(__name__)

# A heartbeat is the gateway's own observation that a value still holds: it never claims a server's reading identity
_NOT_ON_HEARTBEAT = int(Flag.SERVER_TS | Flag.OVERFLOW | Flag.BACKFILL)
# The flags as plain ints: `&` between an int and an IntFlag member goes through enum (~0.6 µs), between two ints it
# stays in C (~0.01 µs), and emit runs once per value read
_BACKFILL, _OVERFLOW, _SERVER_TS = int(Flag.BACKFILL), int(Flag.OVERFLOW), int(Flag.SERVER_TS)
_SIZED = (str, list, dict)  # the value types that may be over gateway.record.MAX_VALUE_BYTES


class ConnectionBase(BaseModel):
    """Settings common to every collector connection."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Connection name; it is the records' source, so keep it stable (record ids depend on it).",
    )
    enabled: bool = Field(default=True, description="Set false to stop this connection without removing it.")
    deadband: Deadband = Field(default_factory=Deadband, description="Report-by-exception settings.")
    tag_map: dict[str, str] = Field(
        default_factory=dict,
        description="Source tag -> published name, e.g. a SiteWise property alias /site/area/line/machine/tag.",
    )
    tag_prefix: str = Field(default="", description="Prefix for source tags not in tag_map, e.g. /site/line1/.")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="First reconnect delay (doubles, with jitter).")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="Longest reconnect delay; retries never stop.")
    flush_interval_s: float = Field(
        default=0.0, ge=0,
        description="0: read values are written as soon as the stream is free, those read during a write go "
                    "together into the next one. Above 0: written every this many seconds (fewer, larger messages; "
                    "each value waits up to this long).",
    )


@dataclass
class Counters:
    """Per-connection counters, written to the status file and shown by ``gatewayctl status``."""

    values_read: int = 0
    values_written: int = 0
    values_suppressed: int = 0
    bad_values_read: int = 0
    values_dropped: int = 0  # read but never written (a stream that refused them past the pending bound, or at stop)
    gaps: int = 0  # times this connection was not read because the collector was not running (gap records written)
    gap_s: float = 0.0  # how long those gaps lasted in total
    gap_open_since_ns: int = 0  # a gap that started then and is not closed yet (no value read since the restart)
    read_errors: int = 0
    # lost before the gateway read them, as the peer reports it (OPC UA: values with the Overflow bit, notification
    # messages missing from the sequence) and the episodes of such losses, each logged once
    values_lost: int = 0
    notification_messages_lost: int = 0
    overloads: int = 0
    connect_retries: int = 0
    connected: bool = False
    last_good_read_ns: int = 0
    last_error: str = ""
    append_latency_ms_last: float = 0.0
    append_latency_ms_max: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Emitter:
    """Turns values read by a protocol module into records for one connection, buffered until the next flush.

    The per-source sequence starts from the start time in microseconds, so it grows across restarts and two
    readings with equal timestamps still get distinct record ids; a collector that kept the last number written
    (its marker) continues from it instead (:meth:`continue_from`).
    """

    def __init__(self, cfg: ConnectionBase, counters: Counters) -> None:
        self.cfg = cfg
        self.counters = counters
        self.deadband = DeadbandFilter(cfg.deadband)
        self._oversize_logged: set[str] = set()
        self._last_sent: dict[str, Record] = {}  # published tag -> its last live record, for heartbeats
        self._readings: dict[str, int] = {}  # published tag -> source time of its last server-stamped record
        self._suppressed: dict[str, Value] = {}  # published tag -> its newest value, when the deadband held it back
        # published tag -> its latest metadata (emit_meta), for the status file; bounded by the connection's tags
        self.meta: dict[str, dict[str, Value]] = {}
        # what the stream holds per tag (newest server source timestamp), kept by the collector after each append;
        # a source that fills gaps from its server's history starts there (gateway.sources.laststored)
        self.stored = LastStored()
        self._seq = start_seq()
        self._names: dict[str, str] = {}  # source tag -> published name (name_of), bounded by the connection's tags
        self.pending: list[Record] = []
        # (count, callback): called once the pending list reaches count, so the owner can flush early
        self.on_full: tuple[int, Callable[[], None]] | None = None
        # called when a record goes into an empty pending list: an idle owner writes it at once instead of at a
        # timer (the collector's group commit, gateway.collector)
        self.on_pending: Callable[[], None] | None = None
        self._taken = asyncio.Event()

    @property
    def seq(self) -> int:
        """The per-source sequence number of the last record made."""
        return self._seq

    def continue_from(self, seq: int) -> None:
        """Go on from ``seq`` (the last number used) instead of the start time, so that the sequence of a source stays
        unbroken across restarts and a consumer sees a hole as a hole."""
        self._seq = seq

    def name_of(self, source_tag: str) -> str:
        return self.cfg.tag_map.get(source_tag) or f"{self.cfg.tag_prefix}{source_tag}"

    def emit(self, source_tag: str, value: Value, quality: Quality, source_ts_ns: int | None = None, *,
             status: int = 0, flags: int = 0) -> None:
        """Accept one value read from the peer (call from the event loop).

        ``status`` is the protocol's status code (OPC UA StatusCode, 0 when Good) and ``flags`` the
        :class:`~gateway.record.Flag` bits; both go onto the record unchanged (see :mod:`gateway.record`).
        """
        self.emit_many(((source_tag, value),), quality, source_ts_ns, status=status, flags=flags)

    def emit_many(self, values: Sequence[tuple[str, Value]], quality: Quality, source_ts_ns: int | None = None, *,
                  status: int = 0, flags: int = 0) -> None:
        """Accept the ``(source tag, value)`` pairs of one reading (a Modbus answer): :meth:`emit` for each, with
        the same quality, source time, status and flags, read at the same instant (one gateway timestamp).

        The work per value is what a polling collector's CPU per value is made of (issue 18), so what is the same
        for the whole reading is done once, and the per-value steps are bound to locals.
        """
        gw = now_ns()
        counters, deadband, names, pending = self.counters, self.deadband, self._names, self.pending
        source, last_sent, readings, suppressed = self.cfg.name, self._last_sent, self._readings, self._suppressed
        was_empty = not pending
        # a value read from history is not a repeat of the live ones (every value of the gap is written), and a
        # value after a loss carries the mark of it: neither is held back (the deadband still sees the latter)
        live, overflow = not flags & _BACKFILL, flags & _OVERFLOW
        counters.values_read += len(values)
        good, kind, read_ts, server_ts = Quality.GOOD, Kind.VALUE, source_ts_ns or gw, flags & _SERVER_TS
        seq, bad = self._seq, 0
        for source_tag, raw in values:
            kind_of = type(raw)
            # a finite number (x - x is NaN for NaN and the infinities): what normalised() returns, without the call
            if (kind_of is float and raw - raw == 0.0) or kind_of is int or kind_of is bool:  # type: ignore[operator]
                value, q = raw, quality
            else:
                if kind_of in _SIZED and oversize(raw):  # one huge value must not stall a connection
                    self._oversize(source_tag, raw)
                value, q = normalised(raw, quality)
            if q != good:
                bad += 1
            tag = names.get(source_tag)
            if tag is None:
                tag = names[source_tag] = self.name_of(source_tag)
            if live and not deadband.accept(tag, value, q, gw, status) and not overflow:
                counters.values_suppressed += 1
                suppressed[tag] = value  # within the deadband, but the newest: what a heartbeat sends
                continue
            if suppressed:
                suppressed.pop(tag, None)
            ts, f = read_ts, flags
            if server_ts and readings.get(tag) == ts:
                # a server reading already sent, sent again (re-read unchanged at the heartbeat, or GOOD again after
                # a lost link): it says "still so at gw", so it must not share the first one's time and id
                # (SERVER_TS makes the id over time and value), or consumers that drop duplicates would drop it
                ts, f = gw, f & ~_SERVER_TS
            seq += 1
            record = Record(source, tag, value, q, ts, gw, seq, kind, status, f)
            if was_empty:  # the first record into an empty list: an idle owner writes it at once
                was_empty = False
                if self.on_pending is not None:
                    self.on_pending()
            pending.append(record)
            if live:
                last_sent[tag] = record
                if f & _SERVER_TS:
                    readings[tag] = ts
        self._seq = seq
        if bad:
            counters.bad_values_read += bad
        if bad < len(values):
            counters.last_good_read_ns = gw
        if self.on_full is not None and len(pending) >= self.on_full[0]:
            self.on_full[1]()

    def beat(self, since_ns: int = 0) -> int:
        """Send again, stamped now, the last value of every tag not sent for ``heartbeat_s`` whose value was read at
        or after ``since_ns`` (see :meth:`heartbeats`); returns how many."""
        gw = now_ns()
        sent = 0
        for tag in self.deadband.due(gw, self.heartbeat_tick_s):
            last = self._last_sent.get(tag)
            if last is None or last.gateway_ts_ns < since_ns:
                continue  # not read in this session: a tag the server no longer has is not kept alive
            if not self.pending and self.on_pending is not None:
                self.on_pending()
            sent += 1
            self._seq += 1
            value = self._suppressed.pop(tag, last.value)
            # the gateway's observation at gw that the value still holds (the subscription is alive and reported
            # no change beyond the deadband): source time gw, so that consumers that judge age by it (anomaly
            # groups) see it current, and no server identity, so that it is not taken for a duplicate of the
            # reading it repeats
            self.pending.append(Record(self.cfg.name, tag, value, last.quality, gw, gw, self._seq, Kind.VALUE,
                                       last.status, last.flags & ~_NOT_ON_HEARTBEAT))
            self.deadband.sent(tag, value, gw)
        if sent and self.on_full is not None and len(self.pending) >= self.on_full[0]:
            self.on_full[1]()
        return sent

    @property
    def heartbeat_tick_s(self) -> float:
        """How often :meth:`heartbeats` looks for due tags: a quarter of ``heartbeat_s``, at most 1 s."""
        return min(self.cfg.deadband.heartbeat_s / 4, 1.0)

    async def heartbeats(self, since_ns: int) -> None:
        """Keep the ``heartbeat_s`` promise where no value comes unasked (a subscription reports changes only): run
        while a session is up, and re-send each tag's last value (its quality and status too) when it was not sent
        for ``heartbeat_s``, for the tags read since the session started at ``since_ns``. One timer per connection,
        no work per value. Never returns; cancel it."""
        while True:
            await asyncio.sleep(self.heartbeat_tick_s)
            self.beat(since_ns)

    def emit_meta(self, source_tag: str, meta: dict[str, Value], source_ts_ns: int | None = None) -> None:
        """Accept a tag's metadata (units, range, description): one ``Kind.META`` record, call it once per tag per
        session and again when the metadata changes.

        It bypasses the deadband (whose state per tag is the tag's values) and the value counters; the record id
        follows the sequence like any record's. The latest metadata per tag stays in :attr:`meta`, which the
        collector's status file shows.
        """
        gw = now_ns()
        value, quality = normalised(meta, Quality.GOOD)
        tag = self.name_of(source_tag)
        if isinstance(value, dict):
            self.meta[tag] = value
        if not self.pending and self.on_pending is not None:
            self.on_pending()
        self._seq += 1
        self.pending.append(Record(self.cfg.name, tag, value, quality,
                                   source_ts_ns if source_ts_ns else gw, gw, self._seq, Kind.META))
        if self.on_full is not None and len(self.pending) >= self.on_full[0]:
            self.on_full[1]()

    def emit_gap(self, t1_ns: int, t2_ns: int, status: int = 0, flags: int = 0) -> None:
        """A gap record of this connection: no data from ``t1_ns`` to ``t2_ns`` (the record described in
        :mod:`gateway.collector`; ``status`` the protocol's code saying why, e.g. a server without history), which
        the collector counts in ``gaps`` and ``gap_s``."""
        if not self.pending and self.on_pending is not None:
            self.on_pending()
        self._seq += 1
        self.pending.append(Record(self.cfg.name, f"collector/{self.cfg.name}/gap", round((t2_ns - t1_ns) / 1e9, 6),
                                   Quality.BAD, t1_ns, t2_ns, self._seq, Kind.METRIC, status, flags))
        if self.on_full is not None and len(self.pending) >= self.on_full[0]:
            self.on_full[1]()

    def _oversize(self, source_tag: str, value: Value) -> None:
        extra = self.counters.extra
        extra["oversize_values_read"] = int(extra.get("oversize_values_read", 0)) + 1
        if source_tag not in self._oversize_logged:
            self._oversize_logged.add(source_tag)
            log.warning("connection %s: tag %s sent a value of %d bytes, over the %d a record carries: it is BAD "
                        "with no value while this lasts (counted as oversize_values_read); the other tags are not "
                        "affected. Fix: leave this tag out of the configuration, or read a smaller node or item",
                        self.cfg.name, source_tag, value_size(value), MAX_VALUE_BYTES)

    async def room(self) -> None:
        """Wait while twice the early-flush count is pending, i.e. while the stream writes slower than the peer is
        read. Polling sources call it between reads, so a fast scan slows to what the stream takes instead of
        piling values up in memory (a 4,000-tag Modbus scan grew the collector past 180 MB without it)."""
        if self.on_full is None:
            return
        while len(self.pending) >= 2 * self.on_full[0]:
            self._taken.clear()
            await self._taken.wait()

    def take(self) -> list[Record]:
        out, self.pending = self.pending, []
        self._taken.set()
        return out


class Source(Protocol):
    """One protocol module's connection to its peer (``OpcUaSource``, ``ModbusSource``, ``OpcDaSource``).

    The contract, checked for every module by tests/sources/test_conformance.py against its real peer:

    - The collector makes a new source for every connection attempt (``cfg.build()``, see :mod:`gateway.plugin`;
      construction does no I/O) and calls :meth:`run` once on it, from its event loop, then drops it.
    - ``run`` connects, calls ``on_connected`` once the session is up and values can flow, then reads until the
      link fails. It never returns while the connection is wanted: it raises (a retryable
      :class:`~gateway.errors.SourceError` naming the peer) and the collector counts a retry (``connect_retries``),
      backs off and makes the next source.
    - Every value read goes to :meth:`Emitter.emit` (or :meth:`Emitter.emit_many`) with its quality and the peer's
      source timestamp when the protocol has one (``None`` otherwise: the read time is used). A value the peer
      reports bad or does not have, or that cannot be decoded, is a per-tag BAD (or UNCERTAIN) emit with no value or
      the tag's last one, never a made-up number, and never ends the session: the other tags keep flowing. A tag the
      peer refuses is also a read error, its reason logged when it first appears.
    - When a session that was up fails, ``run`` emits every tag BAD once, carrying its last value, before raising,
      so a subscription's last GOOD value does not stand for the whole outage.
    - Cancelling ``run`` is how the collector stops or reconfigures a connection: it returns within a few seconds
      whatever the peer does (a peer that hangs included), releasing the peer's session on a best-effort basis.

    A protocol module also has ``async def diagnose(cfg, timeout_s) -> list[Finding]``, which ``gatewayctl doctor``
    reaches through the model's ``diagnose`` (:mod:`gateway.diagnostics`): a peer problem is a failed finding, never
    an exception, found within about ``timeout_s`` even when the peer hangs (doctor gives up 2 s later).
    """

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None: ...


SourceFactory = Callable[[Any], Source]  # one connection's settings -> its source (``cfg.build()`` or a stand-in)
