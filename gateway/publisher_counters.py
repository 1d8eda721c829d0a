"""What the publisher counts per destination, and the records it writes about itself.

:class:`DestinationCounters` are shown in the status file (``gatewayctl status``) and written every metrics
interval as metric records (:func:`metric_records`); :func:`refresh_backlog` measures what is left to send;
:func:`count_dead_lettered` counts refused records by kind of reason; :func:`poison_record` turns a message that
is not a record batch into a dead-letter record.

Logs under ``gateway.publisher``: this is the publisher's bookkeeping, split out for size only.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field

from gateway.aio import Offload
from gateway.record import Quality, Record, make_record
from gateway.record import metric_records as make_metrics
from gateway.streams import RecordReader, StreamStore

log = logging.getLogger("gateway.publisher")
DIGITS = re.compile(r"\d+")
_MAX_REASONS = 50
METRICS = ("records_sent", "bytes_sent", "send_retries", "records_dead_lettered", "backlog_messages",
           "oldest_unsent_age_s", "last_success_age_s", "messages_lost", "corrupt_messages_read")


@dataclass
class DestinationCounters:
    records_sent: int = 0
    bytes_sent: int = 0
    send_retries: int = 0
    records_dead_lettered: int = 0
    messages_lost: int = 0
    corrupt_messages_read: int = 0
    backlog_messages: int = 0
    oldest_unsent_age_s: float = 0.0
    last_success_ns: int = 0
    last_success_age_s: float = -1.0  # -1: never
    last_error: str = ""
    restarts: int = 0  # of this destination's start or pumps, after a failure (see the supervisor)
    store_resets: int = 0  # streams found restarted at lower sequence numbers, read again from their oldest
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


def count_dead_lettered(counters: DestinationCounters, name: str, rejected: list[tuple[Record, str]]) -> None:
    """Count records destination ``name`` refused for good (already in the dead-letter stream), by reason."""
    for _record, reason in rejected:
        # Numbers (sizes, timestamps) vary per record: one log line per kind of problem, not per record.
        key = DIGITS.sub("N", reason)[:160]
        if key not in counters.dead_letter_reasons and len(counters.dead_letter_reasons) >= _MAX_REASONS:
            key = "other reasons"
        if key not in counters.dead_letter_reasons:
            log.error("destination %s: dead-lettered a record (further ones like it are only counted): %s",
                      name, reason)
        counters.dead_letter_reasons[key] = counters.dead_letter_reasons.get(key, 0) + 1
    counters.records_dead_lettered += len(rejected)


def metric_records(component: str, counters: dict[str, DestinationCounters], ts: int, seq: int) -> list[Record]:
    """One metric record per destination and :data:`METRICS` key, numbered from ``seq + 1``."""
    return make_metrics(component, ((f"publisher/{name}/{key}", getattr(c, key)) for name, c in counters.items()
                                    for key in METRICS), ts, seq)


def poison_record(stream: str, seq: int, payload: bytes, why: str) -> tuple[Record, str]:
    """A stream message that is not a valid record batch, as a dead-letter record that carries its bytes (base64),
    so that the dead-letter stream stays readable and the message can still be examined; the id is stable per
    stream and sequence number, so readers that dead-letter the same message make one record downstream."""
    record = make_record(f"deadletter:{stream}", "undecodable-message", base64.b64encode(payload).decode(),
                         seq=seq, source_ts_ns=0, quality=Quality.BAD)
    return record, f"stream {stream} message {seq} is not a valid record batch: {why}"


async def refresh_backlog(counters: dict[str, DestinationCounters], readers: dict[tuple[str, str], RecordReader],
                          store: StreamStore, aux: Offload) -> None:
    """Backlog depth and age of the oldest unsent record, per destination (worst stream), through ``aux``."""
    for name, dest_counters in counters.items():
        depth, age, lost, corrupt = 0, 0.0, 0, 0
        for (dest, stream), reader in list(readers.items()):
            if dest != name:
                continue
            lost, corrupt = lost + reader.messages_lost, corrupt + reader.corrupt_messages_read
            depth += await aux(reader.backlog)
            head = await aux(store.read, stream, reader.committed, max_count=1)
            if head:
                age = max(age, time.time() - head[0].ts_ms / 1000)
        dest_counters.backlog_messages, dest_counters.oldest_unsent_age_s = depth, round(age, 3)
        dest_counters.messages_lost, dest_counters.corrupt_messages_read = lost, corrupt
        if dest_counters.last_success_ns:
            dest_counters.last_success_age_s = round((time.time_ns() - dest_counters.last_success_ns) / 1e9, 3)
