"""The collector runtime shared by the three collector components.

Each connection runs in its own task: connect, read until something breaks, back off, reconnect, forever. One
flusher writes what all the connections read since its last flush in one append (one stream message per
``MAX_RECORDS_PER_MESSAGE`` records): each append is fsynced, so its cost is shared by every PLC. A failing
connection never stalls the others, and a failing stream never loses what was read: records stay pending (bounded,
overflow counted) until the stream takes them; what is dropped all the same (past the bound, or refused at stop) is an
ERROR with its count, a per-connection counter and a durable loss (``gatewayctl buffer``).

Gaps. At start a connection continues its sequence from its marker (:mod:`gateway.collector_state`), and when the
first value arrives the collector writes a gap record before it: source = the connection, tag
``collector/<connection>/gap``, Kind.METRIC, quality BAD, source time t1 = the last value written before, gateway
time t2 = the first value read now, value = t2 - t1 in seconds. A consumer tells it from a value by its kind (never
VALUE) and its tag; the sequence number it takes makes the hole visible in the source's sequence too. Gaps are
counted per connection. A connection that reads its gaps back from its server's history (OPC UA ``backfill``) starts
from the newest source timestamp the stream holds per tag and writes gap records itself for what the server does
not have (a gap record may then come anywhere in a batch); the collector writes its own only when there is nothing
to start from.

Metrics. Every ``metrics_interval_s`` and at stop the collector writes its per-connection counters into its stream
as METRIC records (source = the component, tag ``collector/<connection>/<counter>``), like the publisher's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

from gateway.aio import Backoff, Offload, cancel_and_wait, cancel_requested
from gateway.collector_state import ConnectionState, fills_gaps
from gateway.errors import GatewayError, StreamError
from gateway.record import Kind, Quality, Record, metric_records, start_seq
from gateway.runtime import Context
from gateway.sources.common import ConnectionBase, Counters, Emitter, SourceFactory
from gateway.status import StatusFile
from gateway.streams import PositionStore, RecordWriter, StreamSpec, StreamStore, open_store

log = logging.getLogger(__name__)

_KIND = attrgetter("kind")

MAX_PENDING_RECORDS = 500_000
# The unwritten values of all connections together that wake the flusher before its interval: a fast source then
# writes in bounded batches, which keeps memory flat (a 90,000 values/s Modbus scan made 18,000-record batches at
# 0.2 s). Each connection gets an equal share (at least MIN_FLUSH_SHARE), and a connection holding twice its share
# waits before reading more (Emitter.room): a bound per connection of 2 x 4,000 let 200 PLCs at 85,000 values/s pile
# up ~100,000 values while an append was in flight, and the process kept 230-250 MB of RSS after them.
FLUSH_AT_RECORDS = 4_000
MIN_FLUSH_SHARE = 10
# With flush_interval_s 0 (group commit), how long to wait before writing again after the stream refused an append.
RETRY_WRITE_S = 0.2
# ... and the least time between the starts of two flushes: under load a batch then holds at least this long of
# values, so the fixed cost of an append (fsync, the store's file checks, the thread hand-over) stays a small share
# of the CPU (a 100,000 values/s Modbus scan lost a third of its rate with ~300 appends/s); a value read while the
# stream is idle still goes at once.
MIN_FLUSH_GAP_S = 0.01
METRICS_INTERVAL_S = 60.0  # the publisher's default: counters as records once a minute
METRICS = ("values_read", "values_written", "values_suppressed", "bad_values_read", "values_dropped", "read_errors",
           "connect_retries", "gaps", "gap_s")


class _Connection:
    def __init__(self, cfg: ConnectionBase, factory: SourceFactory) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self.emitter = Emitter(cfg, self.counters)
        self.factory = factory
        self.task: asyncio.Task[None] | None = None
        self.backlog: list[Record] = []
        self.gap: tuple[int, int] | None = None  # (t1 ns, seq) of a gap record to write before the first value
        self.own_gap_seq = -1  # the seq of the gap record the collector wrote for its own restart

    async def loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        first = True
        while True:
            if not first:
                self.counters.connect_retries += 1
            first = False

            def connected() -> None:
                backoff.reset()
                if not self.counters.connected:
                    log.info("connection %s: connected", self.cfg.name)
                self.counters.connected = True

            try:
                await self.factory(self.cfg).run(self.emitter, connected)
                reason = "source stopped"
            except asyncio.CancelledError:
                raise
            except GatewayError as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - the boundary: any peer failure must lead to a reconnect
                reason = f"{type(exc).__name__}: {exc}"
            if cancel_requested():  # the source lost our cancel (3.11 wait_for): going round again would never end
                raise asyncio.CancelledError
            self.counters.read_errors += 1
            if self.counters.connected or self.counters.last_error != reason:
                log.warning("connection %s: disconnected: %s (retrying with backoff)", self.cfg.name, reason)
            self.counters.connected = False
            self.counters.last_error = reason
            await asyncio.sleep(backoff.next_delay())

    async def stop(self) -> None:
        """Cancel the connection and wait for its end, cancelling again if the source lost the cancel."""
        if self.task is not None:
            await cancel_and_wait(self.task)


class Collector:
    """Runs the connections of one collector component and writes their records into its stream.

    ``state_dir`` holds the per-connection markers (None: no markers, no gap records; tests that count records);
    ``positions`` receives durable loss counts; ``metrics_interval_s`` None writes no METRIC records.
    """

    def __init__(
        self,
        component: str,
        store: StreamStore,
        stream: StreamSpec,
        factory: SourceFactory,
        *,
        status_dir: Path | None = None,
        status_interval_s: float = 2.0,
        state_dir: Path | None = None,
        positions: PositionStore | None = None,
        metrics_interval_s: float | None = None,
    ) -> None:
        self.component = component
        self.store = store
        self.stream = stream
        self.factory = factory
        self.status_file = StatusFile(component, status_dir)
        self.status_interval_s = status_interval_s
        self.state_dir = state_dir
        self.positions = positions
        self.metrics_interval_s = metrics_interval_s
        self.connections: dict[str, _Connection] = {}
        self.values_dropped = 0
        self._offload = Offload(f"{component}-stream")
        self._writer = RecordWriter(store, stream.name)
        self._wake = asyncio.Event()  # a connection holds its share of FLUSH_AT_RECORDS values
        self._arrived = asyncio.Event()  # a value went into a connection's empty pending list
        self._seqs: dict[str, int] = {}  # last sequence number per connection name, across changes of its settings
        self.state = ConnectionState(state_dir, store, stream.name)
        self._metric_seq = start_seq()

    async def run(self, connections: Sequence[ConnectionBase], stop: asyncio.Event) -> None:
        await self._offload(self.store.create_stream, self.stream)
        await self.apply(connections)
        loops = [asyncio.create_task(self._flush_loop(stop)), asyncio.create_task(self._status_loop(stop))]
        if self.metrics_interval_s:
            loops.append(asyncio.create_task(self._metrics_loop(stop, self.metrics_interval_s)))
        await stop.wait()
        await asyncio.gather(*(c.stop() for c in self.connections.values()))
        await asyncio.gather(*loops)
        await self._flush()  # what was read before the stop still goes into the stream
        await self._offload(self.state.sync)  # the markers held back: a clean stop leaves them exact
        for name, conn in self.connections.items():  # the stream refused the rest: never silently
            conn.backlog = self._drop(name, conn.backlog, "at stop")
        if self.metrics_interval_s:
            await self._write_metrics()
        self._write_status()
        self._offload.close()

    async def serve(
        self,
        connections: Sequence[ConnectionBase],
        ctx: Context[Any],
        select: Callable[[Any], Sequence[ConnectionBase]],
    ) -> None:
        """Run until ``ctx.stop``; apply every accepted new configuration from ``ctx.updates`` without a restart."""
        runner = asyncio.create_task(self.run(connections, ctx.stop))
        stopping = asyncio.create_task(ctx.stop.wait())
        while not ctx.stop.is_set():
            update = asyncio.create_task(ctx.updates.get())
            await asyncio.wait({update, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if update.done():
                await self.apply(select(update.result()))
            else:
                update.cancel()
        await runner

    async def apply(self, connections: Sequence[ConnectionBase]) -> None:
        """Apply a new set of connections: only added, removed or changed connections restart."""
        wanted = {c.name: c for c in connections if c.enabled}
        for name in list(self.connections):
            old = self.connections[name]
            if name not in wanted or wanted[name] != old.cfg:
                await old.stop()
                pending = old.backlog + old.emitter.take()
                if pending:  # keep what the old connection read
                    refused = await self._write({name: pending})
                    self._drop(name, refused.get(name, []), "when the connection was " +
                               ("removed" if name not in wanted else "changed"))
                self._seqs[name] = old.emitter.seq
                del self.connections[name]
                log.info("connection %s: stopped (%s)", name, "removed" if name not in wanted else "changed")
        share = max(MIN_FLUSH_SHARE, FLUSH_AT_RECORDS // max(len(wanted), 1))
        for conn in self.connections.values():
            conn.emitter.on_full = (share, self._wake.set)
        for name, cfg in wanted.items():
            if name not in self.connections:
                conn = _Connection(cfg, self.factory)
                conn.emitter.on_full = (share, self._wake.set)
                conn.emitter.on_pending = self._arrived.set
                conn.emitter.stored = await self._offload(self.state.load_stored, name, cfg, len(wanted))
                if name in self._seqs:  # settings changed in this process: same sequence, no gap to speak of
                    conn.emitter.continue_from(self._seqs[name])
                else:
                    marker = await self._offload(self.state.read_marker, name)
                    if marker is not None:
                        last_seq, t1 = marker
                        conn.emitter.continue_from(last_seq + 1)  # last_seq + 1 is the gap record's
                        if t1 is not None:
                            conn.counters.gap_open_since_ns = t1
                            # a source that fills gaps from its server's history writes gap records for what it
                            # cannot fill (gateway.sources.opcua_history); without what the stream held per tag it
                            # cannot know the gap, so the collector writes it
                            if not (fills_gaps(cfg) and conn.emitter.stored.snapshot()):
                                conn.gap = (t1, last_seq + 1)
                self.connections[name] = conn
                conn.task = asyncio.create_task(conn.loop(), name=f"conn-{name}")

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        """Write what the connections read: with ``flush_interval_s`` 0, as soon as the stream is free (group
        commit: the values read while an append is in flight go together into the next one, so batches grow with
        the load and an idle stream takes a value at once), at most every ``MIN_FLUSH_GAP_S``; otherwise every
        interval, or early when a connection holds its share of ``FLUSH_AT_RECORDS``."""
        interval = min((c.cfg.flush_interval_s for c in self.connections.values()), default=0.0)
        stopped = asyncio.create_task(stop.wait())
        clock = asyncio.get_running_loop().time
        started = -MIN_FLUSH_GAP_S
        try:
            while not stop.is_set():
                if interval > 0:
                    await _either(self._wake, stopped, interval)
                else:
                    self._arrived.clear()  # set again by the next value into an empty pending list
                    if not self._has_pending():
                        await _either(self._arrived, stopped, None)
                    gap = started + MIN_FLUSH_GAP_S - clock()
                    if gap > 0:
                        await asyncio.wait((stopped,), timeout=gap)
                    started = clock()
                if not await self._flush() and interval == 0:
                    await asyncio.wait((stopped,), timeout=RETRY_WRITE_S)  # the stream refused: no busy loop
        finally:
            stopped.cancel()

    def _has_pending(self) -> bool:
        return any(c.backlog or c.emitter.pending for c in self.connections.values())

    async def _flush(self) -> bool:
        """Write what every connection read, in one append; False when the stream refused it (kept to retry)."""
        batch: dict[str, list[Record]] = {}
        for name, conn in list(self.connections.items()):
            records = conn.backlog + conn.emitter.take()
            conn.backlog = []
            if records and conn.gap is not None:
                (t1, seq), conn.gap = conn.gap, None
                t2 = records[0].gateway_ts_ns
                records.insert(0, Record(name, f"collector/{name}/gap", round((t2 - t1) / 1e9, 6), Quality.BAD,
                                         t1, t2, seq, Kind.METRIC))
                conn.own_gap_seq = seq
            if records:
                batch[name] = records
        if not batch:
            return True
        refused = await self._write(batch)
        for name, records in refused.items():
            self.connections[name].backlog = records
        return not refused

    async def _write(self, batch: dict[str, list[Record]]) -> dict[str, list[Record]]:
        """Write the connections' records in one append; on a stream failure return them to retry at the next flush
        (bounded per connection)."""
        t0 = time.perf_counter()
        try:
            await self._offload(self._append, batch)
        except StreamError as exc:
            for name, records in batch.items():
                conn = self.connections.get(name)
                if conn:
                    conn.counters.last_error = str(exc)
                if len(records) > MAX_PENDING_RECORDS:
                    drop = len(records) - MAX_PENDING_RECORDS
                    self._drop(name, records[:drop], f"because stream {self.stream.name} refuses data ({exc})")
                    batch[name] = records[drop:]
            return batch
        ms = (time.perf_counter() - t0) * 1000
        for name, records in batch.items():
            conn = self.connections.get(name)
            if not conn:
                continue
            # gap records (the collector's, or the source's) and a tag's metadata are not among its values; both
            # are rare, so the kinds are looked at in C before any record is (a pass in Python cost 4 % of a fast
            # Modbus scan's CPU, issue 18)
            kinds = list(map(_KIND, records))
            gaps = [r for r in records if r.kind == Kind.METRIC] if Kind.METRIC in kinds else []
            metas = kinds.count(Kind.META)
            conn.counters.values_written += len(records) - len(gaps) - metas
            conn.counters.append_latency_ms_last = ms
            conn.counters.append_latency_ms_max = max(conn.counters.append_latency_ms_max, ms)
            for gap in gaps:
                self._gap_written(name, conn, gap)
        return {}

    def _append(self, batch: dict[str, list[Record]]) -> None:
        """One append for every connection, with each connection's on-disk state moved around it
        (:class:`ConnectionState`): each append is fsynced, and one per connection made 200 PLCs 200 fsyncs a
        flush while their values waited in memory."""
        for name, records in batch.items():
            self.state.before_append(name, records[-1].seq)
        self._writer.write(list(chain.from_iterable(batch.values())))
        for name, records in batch.items():
            self.state.after_append(name, records)

    def _gap_written(self, name: str, conn: _Connection, gap: Record) -> None:
        seconds = float(gap.value)  # type: ignore[arg-type]
        conn.counters.gaps += 1
        conn.counters.gap_s = round(conn.counters.gap_s + seconds, 6)
        conn.counters.gap_open_since_ns = 0
        self._loss(gaps=1, gap_s=seconds)
        if gap.seq != conn.own_gap_seq:
            return  # the source that wrote it logged why
        log.warning("connection %s: no data from %s to %s (%.1f s: the collector was not running); written as %s",
                    name, _iso(gap.source_ts_ns), _iso(gap.gateway_ts_ns), seconds, gap.tag)

    def _drop(self, name: str, records: list[Record], why: str) -> list[Record]:
        """Count, log (ERROR) and durably record values that will never be written; returns the empty backlog."""
        n = sum(r.kind == Kind.VALUE for r in records)
        if n:
            self.values_dropped += n
            conn = self.connections.get(name)
            if conn:
                conn.counters.values_dropped += n
            self._loss(values_dropped=n)
            log.error("collector %s: connection %s: dropped %d values read but not written %s; raise the stream's "
                      "max_size_bytes or get its readers going", self.component, name, n, why)
        return []

    def _loss(self, **counts: float) -> None:
        if self.positions is None:
            return
        try:
            self.positions.add_losses(self.component, self.stream.name, **counts)
        except OSError as exc:  # the log line and the status still say it
            log.error("collector %s: could not record losses %s durably: %s", self.component, counts, exc)

    async def _metrics_loop(self, stop: asyncio.Event, interval_s: float) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
                return  # the last ones are written at stop, after the last flush
            except asyncio.TimeoutError:
                await self._write_metrics()

    async def _write_metrics(self) -> None:
        records = metric_records(self.component, ((f"collector/{name}/{key}", getattr(conn.counters, key))
                                                   for name, conn in self.connections.items() for key in METRICS),
                                 time.time_ns(), self._metric_seq)
        self._metric_seq += len(records)
        if not records:
            return
        try:
            await self._offload(self._writer.write, records)
        except StreamError as exc:  # the status file still has them; values matter more than their counters
            log.warning("collector %s: metrics not written to %s: %s", self.component, self.stream.name, exc)

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._write_status()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.status_interval_s)
            except asyncio.TimeoutError:
                pass

    def status(self) -> dict[str, Any]:
        connections = {}
        for n, c in self.connections.items():
            connections[n] = c.counters.as_dict()
            connections[n]["values_per_s"] = self.status_file.rate(n, c.counters.values_read)
            connections[n]["tags"] = dict(c.emitter.meta)  # each tag's latest units and ranges (META records)
        return {
            **self.status_file.header(),
            "status_interval_s": self.status_interval_s,
            "stream": self.stream.name,
            "values_dropped": self.values_dropped,
            "connections": connections,
        }

    def _write_status(self) -> None:
        self.status_file.write(self.status())


async def _either(event: asyncio.Event, stopped: asyncio.Task[Any], timeout: float | None) -> None:
    """Wait for ``event``, the stop or the timeout, then clear ``event``."""
    woken = asyncio.create_task(event.wait())
    await asyncio.wait((stopped, woken), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    woken.cancel()
    event.clear()


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 1_000_000_000 // 1_000_000:03d}Z"


def collector_runner(name: str, source: SourceFactory | None = None) -> Callable[[Context[Any]], Awaitable[None]]:
    """The ``run`` of a collector component (for :func:`gateway.runtime.component_main`): open the store, serve the
    configured connections into the component's stream until stopped, applying deployments as they come.

    Each connection attempt builds its source from the connection's model (``conn.build()``, see
    :mod:`gateway.plugin`); ``source`` overrides that (a stand-in).
    """
    factory: SourceFactory = source or (lambda conn: conn.build())

    async def run(ctx: Context[Any]) -> None:
        cfg = ctx.config
        if not cfg.connections:  # a bare deployment of the bundle: idle, but never silently
            log.warning("%s: no connections configured: nothing is read until a deployment (or the --config file) "
                        "adds connections (docs/collectors.md)", name)
        store, positions = open_store(cfg.store)
        root = Path(cfg.store.path)
        collector = Collector(name, store, cfg.stream, factory, status_dir=root / "status",
                              status_interval_s=cfg.status_interval_s, state_dir=root / "state" / name,
                              positions=positions,
                              metrics_interval_s=getattr(cfg, "metrics_interval_s", METRICS_INTERVAL_S))
        try:
            await collector.serve(cfg.connections, ctx, lambda new: new.connections)
        finally:
            store.close()

    return run
