"""The publisher engine: every destination drains every stream it routes from its own durable position.

One pump per (destination, stream). A pump reads a batch, keeps the records its route wants, delivers them and
commits the position only after the destination accepted them, so the stream is the offline buffer and a
destination that is down holds back nobody else. Retryable failures are retried forever with backoff and jitter;
records a destination refuses for good go to the dead-letter stream, counted. A batch that fails for a
non-retryable reason is split in halves until the poison record is isolated, so one bad record never blocks a
destination and never takes good records with it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.destinations.base import Destination, DestinationBase, Router, SendResult
from gateway.errors import DestinationError, GatewayError, StreamError, StreamNotFound
from gateway.record import Kind, Quality, Record, make_record, now_ns
from gateway.runtime import StatusFile
from gateway.sources.common import Backoff
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec, StreamStore
from gateway.streams.aio import Offload

log = logging.getLogger(__name__)
COMPONENT = "factoryedge.Publisher"
_DIGITS = re.compile(r"\d+")
_MAX_REASONS = 50
_METRICS = ("records_sent", "bytes_sent", "retries", "dead_lettered", "backlog_messages", "oldest_unsent_age_s",
            "last_success_age_s", "lost_messages", "corrupt_messages")


@dataclass
class DestinationCounters:
    records_sent: int = 0
    bytes_sent: int = 0
    retries: int = 0
    dead_lettered: int = 0
    lost_messages: int = 0
    corrupt_messages: int = 0
    backlog_messages: int = 0
    oldest_unsent_age_s: float = 0.0
    last_success_ns: int = 0
    last_success_age_s: float = -1.0  # -1: never
    last_error: str = ""
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


class Publisher:
    """Runs the pumps, the dead-letter writer, the metrics records and the status file."""

    def __init__(
        self,
        store: StreamStore,
        positions: PositionStore,
        destinations: Mapping[str, tuple[DestinationBase, Destination]],
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
        self.status_file = StatusFile(COMPONENT, status_dir)
        self.status_interval_s = status_interval_s
        self._readers: dict[tuple[str, str], RecordReader] = {}
        self._aux = Offload("publisher-aux")
        self._seq = time.time_ns() // 1000

    async def run(self, stop: asyncio.Event) -> None:
        for name in (self.dead_letter_stream, self.metrics_stream):
            await self._aux(self.store.create_stream, StreamSpec(name=name))
        pumps = []
        for name, (cfg, sink) in self.destinations.items():
            await sink.start()
            for stream in cfg.route.streams:
                pumps.append(asyncio.create_task(self._pump(name, cfg, sink, stream, stop), name=f"{name}:{stream}"))
        loops = [asyncio.create_task(self._status_loop(stop)), asyncio.create_task(self._metrics_loop(stop))]
        await stop.wait()
        await asyncio.gather(*pumps, *loops)
        for _cfg, sink in self.destinations.values():
            await sink.close()
        await self.refresh_backlog()  # the last status must tell what is left to send
        self._write_status()
        self._aux.close()

    async def _pump(self, name: str, cfg: DestinationBase, sink: Destination, stream: str, stop: asyncio.Event) -> None:
        offload = Offload(f"read-{name}-{stream}")
        counters = self.counters[name]
        reader = await self._open_reader(offload, name, stream, stop)
        if reader is None:
            offload.close()
            return
        router = Router(cfg.route)
        backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        try:
            while not stop.is_set():
                try:
                    batch = await offload(reader.poll, max_messages=cfg.batch_messages, timeout_s=0.5)
                except StreamError as exc:  # stream manager restarting, a stream deleted: wait, never crash
                    if str(exc) != counters.last_error:
                        log.warning("destination %s: reading %s failed: %s", name, stream, exc)
                    counters.last_error = str(exc)
                    if await _wait(stop, backoff.next_delay()):
                        return
                    continue
                if not batch.messages:
                    continue
                if batch.poison:  # before the commit below moves past them: they must not vanish
                    await self._dead_letter(name, [poison_record(stream, *p) for p in batch.poison])
                wanted = [r for r in batch.records if router.wants(r)]
                t0 = time.monotonic()
                if not await self._deliver_all(name, sink, wanted, backoff, stop):
                    reader.rewind()  # not all delivered: read again after a restart
                    return
                await offload(reader.commit, batch.next_seq)
                if cfg.max_records_per_s and wanted:
                    await _wait(stop, len(wanted) / cfg.max_records_per_s - (time.monotonic() - t0))
        finally:
            offload.close()

    async def _deliver_all(
        self, name: str, sink: Destination, records: list[Record], backoff: Backoff, stop: asyncio.Event
    ) -> bool:
        """Deliver until every record was accepted or dead-lettered; resend only what the service refused for now.

        Returns False when stopped first (the caller must not commit).
        """
        counters = self.counters[name]
        pending = records
        while pending:
            try:
                result = await self._deliver(sink, pending)
            except GatewayError as exc:  # a DestinationError, or e.g. IPC refused: retry, never crash the pump
                self._retrying(name, str(exc))
                if await _wait(stop, backoff.next_delay()):
                    return False
                continue
            except Exception as exc:  # a bug in a destination must not stop the others or crash-loop the component
                if counters.last_error != repr(exc):
                    log.exception("destination %s: unexpected failure (a bug: please report it); retrying", name)
                self._retrying(name, repr(exc))
                if await _wait(stop, backoff.next_delay()):
                    return False
                continue
            if result.rejected:
                await self._dead_letter(name, result.rejected)
            counters.records_sent += len(pending) - len(result.rejected) - len(result.retry)
            counters.bytes_sent += result.bytes_sent
            if len(result.retry) < len(pending):
                counters.last_success_ns = now_ns()
            pending = result.retry
            if pending:
                self._retrying(name, result.retry_reason, len(pending))
                if await _wait(stop, backoff.next_delay()):
                    return False
        backoff.reset()
        counters.last_error = ""
        return True

    def _retrying(self, name: str, error: str, pending: int | None = None) -> None:
        """Count a retry; log only when the reason changes (a long outage is one line, not one per attempt)."""
        counters = self.counters[name]
        counters.retries += 1
        if _DIGITS.sub("N", error) != _DIGITS.sub("N", counters.last_error):
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
                if await _wait(stop, 2.0):
                    return None
        return None

    async def _deliver(self, sink: Destination, records: list[Record]) -> SendResult:
        """Send; on a non-retryable failure split the batch to isolate the records that cause it."""
        if not records:
            return SendResult()
        try:
            return await sink.send(records)
        except DestinationError as exc:
            if exc.retryable:
                raise
            if len(records) == 1:
                return SendResult(rejected=[(records[0], str(exc))])
        mid = len(records) // 2
        first = await self._deliver(sink, records[:mid])
        try:
            second = await self._deliver(sink, records[mid:])
        except DestinationError as exc:  # retryable: keep what the first half achieved, resend only the rest
            second = SendResult(retry=records[mid:], retry_reason=str(exc))
        return SendResult(first.rejected + second.rejected, first.bytes_sent + second.bytes_sent,
                          first.retry + second.retry, first.retry_reason or second.retry_reason)

    async def _dead_letter(self, name: str, rejected: list[tuple[Record, str]]) -> None:
        counters = self.counters[name]
        for _record, reason in rejected:
            # Numbers (sizes, timestamps) vary per record: one log line per kind of problem, not per record.
            key = _DIGITS.sub("N", reason)[:160]
            if key not in counters.dead_letter_reasons and len(counters.dead_letter_reasons) >= _MAX_REASONS:
                key = "other reasons"
            if key not in counters.dead_letter_reasons:
                log.error("destination %s: dead-lettered a record (further ones like it are only counted): %s",
                          name, reason)
            counters.dead_letter_reasons[key] = counters.dead_letter_reasons.get(key, 0) + 1
        counters.dead_lettered += len(rejected)
        writer = RecordWriter(self.store, self.dead_letter_stream)
        await self._aux(writer.write, [r for r, _ in rejected])

    async def refresh_backlog(self) -> None:
        """Backlog depth and age of the oldest unsent record, per destination (worst stream)."""
        for name, counters in self.counters.items():
            depth, age, lost, corrupt = 0, 0.0, 0, 0
            for (dest, stream), reader in list(self._readers.items()):
                if dest != name:
                    continue
                lost, corrupt = lost + reader.lost_messages, corrupt + reader.corrupt_messages
                depth += await self._aux(reader.backlog)
                head = await self._aux(self.store.read, stream, reader.committed, max_count=1)
                if head:
                    age = max(age, time.time() - head[0].ts_ms / 1000)
            counters.backlog_messages, counters.oldest_unsent_age_s = depth, round(age, 3)
            counters.lost_messages, counters.corrupt_messages = lost, corrupt
            if counters.last_success_ns:
                counters.last_success_age_s = round((time.time_ns() - counters.last_success_ns) / 1e9, 3)

    def status(self) -> dict[str, Any]:
        return {
            **self.status_file.header(),
            "destinations": {n: {**asdict(c), "records_per_s": self.status_file.rate(n, c.records_sent)}
                             for n, c in self.counters.items()},
        }

    def _write_status(self) -> None:
        self.status_file.write(self.status())

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while True:
            await self.refresh_backlog()
            self._write_status()
            if await _wait(stop, self.status_interval_s):
                return

    async def _metrics_loop(self, stop: asyncio.Event) -> None:
        writer = RecordWriter(self.store, self.metrics_stream)
        while not await _wait(stop, self.metrics_interval_s):
            ts = now_ns()
            records = []
            for name, c in self.counters.items():
                for key in _METRICS:
                    self._seq += 1
                    records.append(Record(COMPONENT, f"publisher/{name}/{key}", float(getattr(c, key)),
                                          Quality.GOOD, ts, ts, self._seq, Kind.METRIC))
            await self._aux(writer.write, records)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds`` unless stopped; return True if stopping."""
    if seconds > 0:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
    return stop.is_set()


def poison_record(stream: str, seq: int, payload: bytes, why: str) -> tuple[Record, str]:
    """A stream message that is not a valid record batch, as a dead-letter record that carries its bytes (base64),
    so that the dead-letter stream stays readable and the message can still be examined; the id is stable per
    stream and sequence number, so readers that dead-letter the same message make one record downstream."""
    record = make_record(f"deadletter:{stream}", "undecodable-message", base64.b64encode(payload).decode(),
                         seq=seq, source_ts_ns=0, quality=Quality.BAD)
    return record, f"stream {stream} message {seq} is not a valid record batch: {why}"
