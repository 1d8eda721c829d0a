"""The one record type that flows through the whole pipeline.

Collectors make records, the anomaly component makes records (scores, alarms), the publisher sends records. A record
is immutable and cheap (a slotted dataclass, not a pydantic model: a collector makes tens of thousands a second).
"""

from __future__ import annotations

import enum
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

Value = float | int | bool | str | None

# The largest value a record carries, in UTF-8 bytes. A record must always fit one stream message (the embedded
# store's frame limit is 8 MiB, gateway/streams/segments.py) with room to spare, and no destination takes more in
# one value (IoT Core messages 128 KiB, Kinesis records 1 MiB, SiteWise strings 1,024 characters). A larger value
# (a 9 MB OPC UA string) becomes a BAD record with no value, counted and logged once by the source.
MAX_VALUE_BYTES = 1 << 20


class Quality(enum.IntEnum):
    """OPC-style quality. Integers so the codec stores one byte; names match SiteWise's."""

    GOOD = 0
    BAD = 1
    UNCERTAIN = 2


class Kind(enum.IntEnum):
    """What a record carries, so routing can send values, scores and alarms to different places."""

    VALUE = 0
    SCORE = 1
    ALARM = 2
    METRIC = 3


def now_ns() -> int:
    """Gateway wall clock in UTC nanoseconds since the epoch."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Record:
    """One timestamped value of one tag.

    Attributes:
        source: the connection (or component) the value came from, e.g. ``plant-opcua``.
        tag: the tag name after mapping, e.g. ``/site/area/line/Reactor/Pressure``.
        value: float, int, bool or str; ``None`` only when quality is not GOOD (no value could be read).
        quality: GOOD, BAD or UNCERTAIN.
        source_ts_ns: when the source says the value was valid (UTC ns).
        gateway_ts_ns: when the gateway received it (UTC ns).
        seq: per-source sequence number, so two values with the same timestamp still get distinct ids.
        kind: value, score, alarm or metric.
    """

    source: str
    tag: str
    value: Value
    quality: Quality
    source_ts_ns: int
    gateway_ts_ns: int
    seq: int
    kind: Kind = Kind.VALUE

    @property
    def id(self) -> str:
        """Deterministic id: the same reading replayed yields the same id, so consumers can drop duplicates."""
        return record_id(self.source, self.tag, self.source_ts_ns, self.seq)


def record_id(source: str, tag: str, source_ts_ns: int, seq: int) -> str:
    """24 hex characters of BLAKE2b over the identifying fields (96 bits: collisions are not a concern)."""
    key = f"{source}\x1f{tag}\x1f{source_ts_ns}\x1f{seq}".encode()
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def value_size(value: Value) -> int:
    """The size of ``value`` in UTF-8 bytes when it is a string, else 0 (numbers and booleans are small).

    Cheap for the common case: a string of fewer than ``MAX_VALUE_BYTES / 4`` characters cannot be over the cap, so
    it is not encoded to find out.
    """
    if not isinstance(value, str) or len(value) * 4 <= MAX_VALUE_BYTES:
        return 0 if not isinstance(value, str) else len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def oversize(value: Value) -> bool:
    """True when ``value`` is larger than a record may carry (:data:`MAX_VALUE_BYTES`)."""
    return value_size(value) > MAX_VALUE_BYTES


def normalised(value: Value, quality: Quality) -> tuple[Value, Quality]:
    """``value`` and ``quality`` as a record carries them: every maker of records (a source's emitter, the detector,
    the dead-letter path) goes through here, so that no destination meets what it could not carry.

    NaN and infinite floats become BAD quality with no value (JSON and SiteWise cannot carry them, and a PLC that
    reports NaN is reporting a fault), and so does a string over :data:`MAX_VALUE_BYTES`; a missing value is never
    GOOD.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, Quality.BAD
    elif isinstance(value, str) and oversize(value):
        return None, Quality.BAD
    if value is None and quality == Quality.GOOD:
        return None, Quality.BAD
    return value, quality


def make_record(
    source: str,
    tag: str,
    value: Value,
    *,
    seq: int,
    source_ts_ns: int | None = None,
    gateway_ts_ns: int | None = None,
    quality: Quality = Quality.GOOD,
    kind: Kind = Kind.VALUE,
) -> Record:
    """Build a record, its value and quality :func:`normalised`."""
    gw = gateway_ts_ns if gateway_ts_ns is not None else now_ns()
    value, quality = normalised(value, quality)
    return Record(source, tag, value, quality, source_ts_ns if source_ts_ns is not None else gw, gw, seq, kind)


def start_seq() -> int:
    """The first sequence number of a source in this process: microseconds since the epoch, so that a source's
    sequence keeps rising across restarts (one restarted at 0 put records out of order per tag downstream)."""
    return time.time_ns() // 1000


def metric_records(source: str, values: Iterable[tuple[str, float]], ts_ns: int, seq: int) -> list[Record]:
    """Counters as METRIC records, ``(tag, value)`` each, numbered from ``seq + 1``: one shape for every component."""
    return [Record(source, tag, float(value), Quality.GOOD, ts_ns, ts_ns, seq + i, Kind.METRIC)
            for i, (tag, value) in enumerate(values, 1)]
