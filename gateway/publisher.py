"""The publisher engine: every destination drains every stream it routes from its own durable position.

One pump per (destination, stream). A pump reads a batch, keeps the records its route wants, delivers them and
commits the position only after the destination accepted them (while it delivers, it reads and decodes the next
batch, which is committed in its turn only once delivered), so the stream is the offline buffer and a
destination that is down holds back nobody else. Retryable failures are retried forever with backoff and jitter;
records a destination refuses for good go to the dead-letter stream, counted. A batch that fails for a
non-retryable reason is split in halves until the poison record is isolated, so one bad record never blocks a
destination and never takes good records with it.

Every task runs under a :class:`~gateway.supervise.Supervisor`: a destination whose ``start()`` fails, a pump
that raises (a corrupt position file, a bug) or a failing status or metrics loop is logged once, shown in the
status (the destination's ``last_error`` and ``restarts``; ``tasks`` and ``last_error`` at the top) and restarted
with backoff, and every other destination keeps delivering. A position that cannot be recorded (disk full) holds
that pump, logged once, until it can: at most the last batch is delivered twice after a crash, never more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from gateway.aio import Backoff, Offload, wait
from gateway.destinations.base import (
    CLOSE_TIMEOUT_S,
    Destination,
    DestinationConfigBase,
    Prepared,
    Preparing,
    Router,
)
from gateway.errors import GatewayError, StreamError, StreamNotFound
from gateway.publisher_counters import (
    DIGITS,
    DestinationCounters,
    count_dead_lettered,
    metric_records,
    poison_record,
    refresh_backlog,
)
from gateway.publisher_send import Settling, deliver, prepare, read_ahead, settled
from gateway.record import Record, now_ns, start_seq
from gateway.status import StatusFile
from gateway.streams import PositionStore, ReadBatch, RecordReader, RecordWriter, StreamSpec, StreamStore
from gateway.supervise import Supervisor, describe

log = logging.getLogger(__name__)
COMPONENT = "factoryedge.Publisher"
_RESET_CHECK_S = 2.0  # how often an idle pump asks whether its stream restarted at lower sequence numbers


class Publisher:
    """Runs the pumps, the dead-letter writer, the metrics records and the status file."""

    def __init__(
        self,
        store: StreamStore,
        positions: PositionStore,
        destinations: Mapping[str, tuple[DestinationConfigBase, Destination]],
        *,
        dead_letter_stream: str,
        metrics_stream: str,
        metrics_interval_s: float = 60.0,
        status_dir: Path | None = None,
        status_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self.positions = positions
        self.destinations = dict(destinations)
        self.counters = {name: DestinationCounters() for name in self.destinations}
        self.dead_letter_stream = dead_letter_stream
        self.metrics_stream = metrics_stream
        self.metrics_interval_s = metrics_interval_s
        self.status_file = StatusFile(COMPONENT, status_dir, status_interval_s)
        self.status_interval_s = status_interval_s
        self._readers: dict[tuple[str, str], RecordReader] = {}
        self._aux = Offload("publisher-aux")
        self._seq = start_seq()
        self.supervisor = Supervisor(COMPONENT, asyncio.Event())
        self._started: set[str] = set()
        self._created: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        for name in (self.dead_letter_stream, self.metrics_stream):
            try:
                await self._ensure_stream(name)
            except (StreamError, OSError) as exc:  # created when first written to, once the store takes it
                log.warning("cannot create stream %s yet: %s", name, describe(exc))
        sup = self.supervisor
        sup.stop = stop
        tasks = [sup.spawn(f"destination {name}", partial(self._destination, name, cfg, sink, stop),
                           on_error=partial(self._task_failed, name), first_s=cfg.retry_min_s, max_s=cfg.retry_max_s)
                 for name, (cfg, sink) in self.destinations.items()]
        tasks += [sup.spawn("status", partial(self._status_loop, stop)),
                  sup.spawn("metrics", partial(self._metrics_loop, stop))]
        await stop.wait()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(self._close(name) for name in self._started))
        try:
            await self.refresh_backlog()  # the last status must tell what is left to send
        except Exception as exc:  # noqa: BLE001 - the status is written anyway, with the last known backlog
            log.warning("could not measure the backlog for the last status: %s", describe(exc))
        self._write_status()
        self._aux.close()

    async def _destination(self, name: str, cfg: DestinationConfigBase, sink: Destination, stop: asyncio.Event) -> None:
        """Start the destination, then run its pumps; a start that raises is retried by the supervisor."""
        await sink.start()
        self._started.add(name)
        self.counters[name].last_error = ""
        await asyncio.gather(*(
            self.supervisor.spawn(f"{name}:{stream}", partial(self._pump, name, cfg, sink, stream, stop),
                                  on_error=partial(self._task_failed, name), first_s=cfg.retry_min_s,
                                  max_s=cfg.retry_max_s)
            for stream in cfg.route.streams))

    async def _close(self, name: str) -> None:
        """Close one destination within its deadline (they close concurrently); failures are logged, not raised."""
        try:
            await asyncio.wait_for(self.destinations[name][1].close(CLOSE_TIMEOUT_S), CLOSE_TIMEOUT_S + 1)
        except asyncio.TimeoutError:  # the destination broke its contract; stopping goes on regardless
            log.warning("destination %s: close overran its %.0f s deadline: abandoned", name, CLOSE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - one destination failing to close must not keep the others open
            log.warning("destination %s: close failed: %s", name, describe(exc))

    def _task_failed(self, name: str, error: str) -> None:
        counters = self.counters[name]
        counters.restarts += 1
        counters.last_error = error

    async def _pump(
        self, name: str, cfg: DestinationConfigBase, sink: Destination, stream: str, stop: asyncio.Event
    ) -> None:
        offload = Offload(f"read-{name}-{stream}")
        commits = Offload(f"commit-{name}-{stream}")  # a commit's fsync must not wait behind a read waiting for data
        counters = self.counters[name]
        reader = await self._open_reader(offload, name, stream, stop)
        if reader is None:
            offload.close()
            commits.close()
            return
        router = Router(cfg.route)
        backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        settling: Settling | None = sink if hasattr(sink, "settle") else None  # type: ignore[assignment]
        preparing: Preparing | None = sink if hasattr(sink, "prepare") else None  # type: ignore[assignment]
        checked_reset = time.monotonic()
        ahead: asyncio.Future[tuple[ReadBatch, list[Record], Prepared | None]] | None = None
        ahead_prepares = False
        try:
            while not stop.is_set():
                prepared: Prepared | None = None
                tried = False  # prepare was asked for this batch (and may have declined)
                try:
                    if ahead is not None:
                        (batch, wanted, prepared), ahead = await ahead, None
                        tried = ahead_prepares
                    else:
                        batch, wanted, _ = await offload(read_ahead, reader, router, cfg, None)
                except StreamError as exc:  # stream manager restarting, a stream deleted: wait, never crash
                    if str(exc) != counters.last_error:
                        log.warning("destination %s: reading %s failed: %s", name, stream, exc)
                    counters.last_error = str(exc)
                    if await wait(stop, backoff.next_delay()):
                        return
                    continue
                if not batch.messages:
                    if settling is not None and not await self._settle(name, stream, commits, reader, settling,
                                                                       None, stop):
                        return
                    if time.monotonic() - checked_reset >= _RESET_CHECK_S:
                        checked_reset = time.monotonic()
                        await self._check_store_reset(name, stream, offload, reader)
                    continue
                # poison before the commit below moves past it: it must not vanish
                if batch.poison and not await self._dead_letter(
                        name, [poison_record(stream, *p) for p in batch.poison], stop):
                    return
                if preparing is not None and not tried and wanted:
                    prepared = await offload(prepare, preparing, wanted)  # nothing in flight: this is its turn
                if settling is None:
                    # Read and decode the next batch while this one is in flight, and prepare its requests when this
                    # one was prepared; it is committed in its turn. A settling destination may rewind the reader at
                    # any time: it reads one batch at a time.
                    ahead_prepares = prepared is not None
                    ahead = asyncio.ensure_future(offload(read_ahead, reader, router, cfg,
                                                          preparing if ahead_prepares else None))
                t0 = time.monotonic()
                if not await self._deliver_all(name, sink, wanted, backoff, stop, prepared):
                    await settled(ahead)  # the read ahead must not move the position after the rewind
                    reader.rewind()  # not all delivered: read again after a restart
                    return
                if settling is not None:
                    if not await self._settle(name, stream, commits, reader, settling, batch.next_seq, stop):
                        return
                elif not await self._commit(name, stream, commits, reader, batch.next_seq, stop):
                    return
                if cfg.max_records_per_s and wanted:
                    await wait(stop, len(wanted) / cfg.max_records_per_s - (time.monotonic() - t0))
        finally:
            await settled(ahead)
            offload.close()
            commits.close()

    async def _settle(self, name: str, stream: str, offload: Offload, reader: RecordReader, sink: Settling,
                      next_seq: int | None, stop: asyncio.Event) -> bool:
        """Commit what the destination says is safe; read the stream again from the committed position when
        what it holds may be lost (see gateway.destinations.iotcore). False when stopped first."""
        safe, rewind = sink.settle(stream, next_seq)
        if rewind:
            log.warning("destination %s: the connection to the nucleus was opened again, so records of %s that only "
                        "its spooler held may be lost: sending again from seq %d (consumers drop duplicates by id)",
                        name, stream, reader.committed)
            reader.rewind()
            return True
        if safe is None or safe > reader.position:  # a position from before a store reset: never skip ahead
            return True
        return await self._commit(name, stream, offload, reader, safe, stop)

    async def _check_store_reset(self, name: str, stream: str, offload: Offload, reader: RecordReader) -> None:
        """A stream that restarted at lower sequence numbers (stream manager's store folder changed, its work
        folder wiped, the stream deleted and created again) leaves this reader waiting past its end, with a backlog
        of 0: detect it as the anomaly engine does, log it once and read the new stream from its oldest record."""
        try:
            info = await offload(self.store.describe, stream)
        except StreamError:  # the stream is away right now: the next check will tell
            return
        if reader.position <= info.next_seq:
            return
        log.warning("destination %s: stream %s restarted at seq %d (this destination was at %d): the stream "
                    "store was reset; sending it from its oldest record", name, stream, info.oldest_seq,
                    reader.position)
        self.counters[name].store_resets += 1
        reader.position = info.oldest_seq
        await offload(reader.commit, info.oldest_seq)

    async def _commit(
        self, name: str, stream: str, offload: Offload, reader: RecordReader, next_seq: int, stop: asyncio.Event
    ) -> bool:
        """Record the position. When it cannot be (disk full), hold this pump and retry: sending on without it
        would make a crash resend everything since, not just this batch. False when stopped first."""
        counters = self.counters[name]
        cfg = self.destinations[name][0]
        backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        failing = False
        while True:
            try:
                await offload(reader.commit, next_seq)
            except OSError as exc:
                error = f"cannot record its position in stream {stream}: {describe(exc)}"
                if not failing:
                    log.warning("destination %s: %s (the batch was delivered; nothing more is sent from this "
                                "stream until it is recorded; retrying with backoff). Fix: free space or make the "
                                "positions folder writable", name, error)
                failing = True
                counters.last_error = error
                if await wait(stop, backoff.next_delay()):
                    return False
                continue
            if failing:
                log.info("destination %s: position in stream %s recorded again", name, stream)
                counters.last_error = ""
            return True

    async def _deliver_all(
        self, name: str, sink: Destination, records: list[Record], backoff: Backoff, stop: asyncio.Event,
        prepared: Prepared | None = None,
    ) -> bool:
        """Deliver until every record was accepted or dead-lettered; resend only what the service refused for now.
        ``prepared`` (see :class:`~gateway.destinations.base.Preparing`) makes the first attempt.

        Returns False when stopped first (the caller must not commit).
        """
        counters = self.counters[name]
        pending = records
        while pending:
            attempt, prepared = prepared, None
            try:
                result = await deliver(sink, pending, attempt)
            except GatewayError as exc:  # a DestinationError, or e.g. IPC refused: retry, never crash the pump
                self._retrying(name, str(exc))
                if await wait(stop, backoff.next_delay()):
                    return False
                continue
            except Exception as exc:  # a bug in a destination must not stop the others or crash-loop the component
                if counters.last_error != repr(exc):
                    log.exception("destination %s: unexpected failure (a bug: please report it); retrying", name)
                self._retrying(name, repr(exc))
                if await wait(stop, backoff.next_delay()):
                    return False
                continue
            if result.rejected and not await self._dead_letter(name, result.rejected, stop):
                return False
            counters.records_sent += len(pending) - len(result.rejected) - len(result.retry)
            counters.bytes_sent += result.bytes_sent
            if len(result.retry) < len(pending):
                counters.last_success_ns = now_ns()
            pending = result.retry
            if pending:
                self._retrying(name, result.retry_reason, len(pending))
                if await wait(stop, backoff.next_delay()):
                    return False
        backoff.reset()
        counters.last_error = ""
        return True

    def _retrying(self, name: str, error: str, pending: int | None = None) -> None:
        """Count a retry; log only when the reason changes (a long outage is one line, not one per attempt)."""
        counters = self.counters[name]
        counters.send_retries += 1
        if DIGITS.sub("N", error) != DIGITS.sub("N", counters.last_error):
            what = f"{pending} records refused for now: " if pending is not None else ""
            log.warning("destination %s: %s%s (retrying with backoff; the data stays in the stream)",
                        name, what, error)
        counters.last_error = error

    async def _open_reader(self, offload: Offload, name: str, stream: str, stop: asyncio.Event) -> RecordReader | None:
        announced = False
        while not stop.is_set():
            try:
                await offload(self.store.describe, stream)  # exists? (a reader alone does not ask)
                reader = await offload(RecordReader, self.store, stream, name, self.positions)
                self._readers[(name, stream)] = reader
                return reader
            except StreamNotFound:
                if not announced:
                    log.info("destination %s: waiting for stream %s to be created", name, stream)
                    announced = True
                if await wait(stop, 2.0):
                    return None
        return None

    async def _ensure_stream(self, stream: str) -> None:
        if stream not in self._created:
            await self._aux(self.store.create_stream, StreamSpec(name=stream))
            self._created.add(stream)

    async def _dead_letter(self, name: str, rejected: list[tuple[Record, str]], stop: asyncio.Event) -> bool:
        """Write refused records to the dead-letter stream, retrying while the store cannot take them (they must
        not vanish: the caller commits past them only on True). False when stopped first."""
        counters = self.counters[name]
        writer = RecordWriter(self.store, self.dead_letter_stream)
        backoff = Backoff(1.0, 30.0)
        failing = False
        while True:
            try:
                await self._ensure_stream(self.dead_letter_stream)
                await self._aux(writer.write, [r for r, _ in rejected])
                break
            except (StreamError, OSError) as exc:
                error = f"cannot write to the dead-letter stream {self.dead_letter_stream}: {describe(exc)}"
                if not failing:
                    log.warning("destination %s: %s (retrying with backoff; the records stay in their stream)",
                                name, error)
                failing = True
                counters.last_error = error
                if await wait(stop, backoff.next_delay()):
                    return False
        count_dead_lettered(counters, name, rejected)
        return True

    async def refresh_backlog(self) -> None:
        """Backlog depth and age of the oldest unsent record, per destination (worst stream)."""
        await refresh_backlog(self.counters, self._readers, self.store, self._aux)

    def status(self) -> dict[str, Any]:
        return {
            **self.status_file.header(),
            **self.supervisor.status(),
            "destinations": {n: {**asdict(c), "records_per_s": self.status_file.rate(n, c.records_sent)}
                             for n, c in self.counters.items()},
        }

    def _write_status(self) -> None:
        self.status_file.write(self.status())

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while True:
            await self.refresh_backlog()
            self._write_status()
            if await wait(stop, self.status_interval_s):
                return

    async def _metrics_loop(self, stop: asyncio.Event) -> None:
        writer = RecordWriter(self.store, self.metrics_stream)
        failing = ""
        while not await wait(stop, self.metrics_interval_s):
            records = metric_records(COMPONENT, self.counters, now_ns(), self._seq)
            self._seq += len(records)
            try:
                await self._ensure_stream(self.metrics_stream)
                await self._aux(writer.write, records)
            except (StreamError, OSError) as exc:  # counters are cumulative: the next interval's records carry on
                if describe(exc) != failing:
                    log.warning("metrics records not written (retried every %s s): %s", self.metrics_interval_s,
                                describe(exc))
                failing = describe(exc)
                continue
            if failing:
                log.info("metrics records written again")
                failing = ""
