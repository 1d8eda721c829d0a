"""The one record type that flows through the whole pipeline.

Collectors make records, the anomaly component makes records (scores, alarms), the publisher sends records. A record
is immutable and cheap (a slotted dataclass, not a pydantic model: a collector makes tens of thousands a second).

The record API (issue #16):

- ``Record(source, tag, value, quality, source_ts_ns, gateway_ts_ns, seq, kind=Kind.VALUE, status=0, flags=0)``.
  ``status`` is the protocol's own status code (the OPC UA StatusCode value; 0 when Good or when the protocol has
  none); :func:`gateway.statuscodes.name` names it. ``flags`` is a :class:`Flag` set: ``BACKFILL`` (read from the
  server's history, not live), ``OVERFLOW`` (the server's queue overflowed before this value: values were lost
  before it), ``SERVER_TS`` (the source timestamp is the server's and identifies the reading).
- ``value`` is a :data:`Value`: a number, boolean, text, ``None`` or a JSON list/dict of those (arrays as lists,
  structures as dicts; the source turns a ByteString into base64 text and a LocalizedText into its text).
  :func:`normalised` makes a value fit (a non-finite float anywhere in it, a value over :data:`MAX_VALUE_BYTES` as
  JSON, or anything that is not JSON makes the record BAD with no value); :func:`json_problem` says why.
- ``Kind.META``: a tag's metadata, value a dict such as ``{"unit": "degC", "unit_id": 4408652, "eu_range": [0.0,
  100.0], "description": "..."}``, emitted once per tag per session and again when it changes. It flows through
  streams and routes like any record (a route's ``kinds`` selects it as ``meta``).
- Record ids (:attr:`Record.id`): over (source, tag, source_ts_ns, seq), except when ``flags`` has ``SERVER_TS`` or
  ``BACKFILL``: then over (source, tag, source_ts_ns, value) and not ``seq``, so that a value read live and read
  again from the server's history is one id downstream, while two live values with the same server timestamp and
  different values stay distinct. A re-send of an unchanged value (a heartbeat) must therefore not carry
  ``SERVER_TS`` with the same timestamp unless it is meant to collapse into the first one.
- Records are not hashable when the value is a list or dict: nothing in the gateway puts records in sets or dict
  keys (use :attr:`Record.id`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

Scalar = float | int | bool | str | None  # what protocols without arrays (Modbus, OPC DA) read
JsonValue = float | int | bool | str | list["JsonValue"] | dict[str, "JsonValue"] | None
Value = JsonValue  # what a record carries: a scalar, or an array (list) or structure (dict) of JSON values

# How deep a list/dict value may nest: deeper is not process data, and a bound keeps checking it off the C stack.
MAX_VALUE_DEPTH = 32

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
    META = 4


class Flag(enum.IntFlag):
    """What else is known about how a record was obtained (a bit set, stored as one integer)."""

    BACKFILL = 1  # read from the server's history after a gap, not live
    OVERFLOW = 2  # the server reported its queue overflowed before this value: values were lost before it
    SERVER_TS = 4  # the source timestamp is the server's and identifies the reading: the id is not over seq


_IDENTITY_FLAGS = int(Flag.SERVER_TS | Flag.BACKFILL)  # an int: & on two ints stays in C
_FLAG_NAMES = tuple((int(f), (f.name or "").lower()) for f in Flag)


def flag_names(flags: int) -> list[str]:
    """The lower-case names of the flags set in ``flags`` (``["backfill", "server_ts"]``); unknown bits as
    ``"0x…"`` so that a newer writer's flag is shown, not lost."""
    names = [n for bit, n in _FLAG_NAMES if flags & bit]
    rest = flags & ~sum(bit for bit, _ in _FLAG_NAMES)
    return [*names, hex(rest)] if rest else names


def now_ns() -> int:
    """Gateway wall clock in UTC nanoseconds since the epoch."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Record:
    """One timestamped value of one tag.

    Attributes:
        source: the connection (or component) the value came from, e.g. ``plant-opcua``.
        tag: the tag name after mapping, e.g. ``/site/area/line/Reactor/Pressure``.
        value: float, int, bool, str or a JSON list/dict of them; ``None`` only when quality is not GOOD.
        quality: GOOD, BAD or UNCERTAIN.
        source_ts_ns: when the source says the value was valid (UTC ns).
        gateway_ts_ns: when the gateway received it (UTC ns).
        seq: per-source sequence number, so two values with the same timestamp still get distinct ids.
        kind: value, score, alarm, metric or meta.
        status: the protocol's status code (OPC UA StatusCode), 0 when Good or when the protocol has none.
        flags: :class:`Flag` bits (backfill, overflow, server timestamp).
    """

    source: str
    tag: str
    value: Value
    quality: Quality
    source_ts_ns: int
    gateway_ts_ns: int
    seq: int
    kind: Kind = Kind.VALUE
    status: int = 0
    flags: int = 0

    @property
    def id(self) -> str:
        """Deterministic id: the same reading replayed yields the same id, so consumers can drop duplicates.

        Over ``seq`` normally; over the value instead when ``flags`` marks the server's timestamp as identity
        (``SERVER_TS`` or ``BACKFILL``), so a value read live and again from history is one id.
        """
        if self.flags & _IDENTITY_FLAGS:
            return record_id(self.source, self.tag, self.source_ts_ns, value_key(self.value))
        return record_id(self.source, self.tag, self.source_ts_ns, self.seq)


def _fast_init() -> Callable[..., None]:
    """``Record.__init__``, writing the slots through their descriptors.

    A frozen dataclass's own ``__init__`` assigns every field through ``object.__setattr__`` to get past the
    ``__setattr__`` that refuses changes: 1.4 µs a record, the largest single cost of a value in a collector (issue
    18). The slots' descriptors do the same in 0.6 µs. Nothing else changes: the record stays frozen, and equality,
    hash, repr and ``dataclasses.replace`` are the dataclass's own (tests/test_record_model.py checks the signature
    against the fields).
    """
    setters = tuple(getattr(Record, f.name).__set__ for f in fields(Record))
    set_source, set_tag, set_value, set_quality, set_sts, set_gts, set_seq, set_kind, set_status, set_flags = setters

    def __init__(self: Record, source: str, tag: str, value: Value, quality: Quality, source_ts_ns: int,
                 gateway_ts_ns: int, seq: int, kind: Kind = Kind.VALUE, status: int = 0, flags: int = 0) -> None:
        set_source(self, source)
        set_tag(self, tag)
        set_value(self, value)
        set_quality(self, quality)
        set_sts(self, source_ts_ns)
        set_gts(self, gateway_ts_ns)
        set_seq(self, seq)
        set_kind(self, kind)
        set_status(self, status)
        set_flags(self, flags)

    return __init__


Record.__init__ = _fast_init()  # type: ignore[method-assign]


def record_id(source: str, tag: str, source_ts_ns: int, seq: int | str) -> str:
    """24 hex characters of BLAKE2b over the identifying fields (96 bits: collisions are not a concern).

    ``seq`` is the sequence number, or a :func:`value_key` (text, so it never equals a number's key).
    """
    hasher = _ID_HASH.copy()  # a copy of a set-up hasher: 20 % of an id's cost went into setting one up
    hasher.update(f"{source}\x1f{tag}\x1f{source_ts_ns}\x1f{seq}".encode())
    return hasher.hexdigest()


_ID_HASH = hashlib.blake2b(digest_size=12)


def value_key(value: Value) -> str:
    """A canonical text of ``value`` for ids: the type is part of it (``1``, ``1.0`` and ``true`` differ) and a
    dict's key order is not."""
    if isinstance(value, list | dict):
        return "j" + json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{type(value).__name__}:{value!r}"


def value_size(value: Value) -> int:
    """The size of ``value`` in UTF-8 bytes when it is a string, its JSON text's size when it is a list or dict,
    else 0 (numbers and booleans are small).

    Cheap for the common case: a string of fewer than ``MAX_VALUE_BYTES / 4`` characters cannot be over the cap, so
    it is not encoded to find out (its length is returned).
    """
    if isinstance(value, list | dict):
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return 0  # not JSON at all: json_problem says so
        return value_size(text)
    if not isinstance(value, str) or len(value) * 4 <= MAX_VALUE_BYTES:
        return 0 if not isinstance(value, str) else len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def json_problem(value: Value) -> str | None:
    """Why a list or dict ``value`` cannot be carried (``None`` when it can): an element that is not a JSON value,
    a key that is not text, a non-finite float, nesting deeper than :data:`MAX_VALUE_DEPTH`, or a JSON text over
    :data:`MAX_VALUE_BYTES`. Scalars are checked by :func:`normalised` itself."""
    problem = _element_problem(value, 0)
    if problem is None and value_size(value) > MAX_VALUE_BYTES:
        problem = f"{value_size(value)} bytes as JSON, over the {MAX_VALUE_BYTES} a record carries"
    return problem


def _element_problem(value: object, depth: int) -> str | None:
    if depth > MAX_VALUE_DEPTH:
        return f"nested deeper than {MAX_VALUE_DEPTH} levels"
    if type(value) is list:
        items: Iterable[object] = value
    elif type(value) is dict:
        if not all(type(k) is str for k in value):
            return "a structure has a field name that is not text"
        items = value.values()
    else:
        return f"an element of type {type(value).__name__} is not a JSON value"
    for v in items:
        t = type(v)
        if t is float:
            if not math.isfinite(v):  # type: ignore[arg-type]
                return "an element is NaN or infinite"
        elif t is list or t is dict:
            problem = _element_problem(v, depth + 1)
            if problem is not None:
                return problem
        elif t is not int and t is not str and t is not bool and v is not None:
            return f"an element of type {t.__name__} is not a JSON value"
    return None


def oversize(value: Value) -> bool:
    """True when ``value`` is larger than a record may carry (:data:`MAX_VALUE_BYTES`)."""
    return value_size(value) > MAX_VALUE_BYTES


def normalised(value: Value, quality: Quality) -> tuple[Value, Quality]:
    """``value`` and ``quality`` as a record carries them: every maker of records (a source's emitter, the detector,
    the dead-letter path) goes through here, so that no destination meets what it could not carry.

    NaN and infinite floats become BAD quality with no value (JSON and SiteWise cannot carry them, and a PLC that
    reports NaN is reporting a fault), and so does a string over :data:`MAX_VALUE_BYTES`, and a list or dict that
    :func:`json_problem` refuses (a NaN inside, too large as JSON, not JSON); a missing value is never GOOD.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, Quality.BAD
    elif isinstance(value, str):
        if oversize(value):
            return None, Quality.BAD
    elif isinstance(value, list | dict) and json_problem(value) is not None:
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
    status: int = 0,
    flags: int = 0,
) -> Record:
    """Build a record, its value and quality :func:`normalised`."""
    gw = gateway_ts_ns if gateway_ts_ns is not None else now_ns()
    value, quality = normalised(value, quality)
    return Record(source, tag, value, quality, source_ts_ns if source_ts_ns is not None else gw, gw, seq, kind,
                  int(status), int(flags))


def start_seq() -> int:
    """The first sequence number of a source in this process: microseconds since the epoch, so that a source's
    sequence keeps rising across restarts (one restarted at 0 put records out of order per tag downstream)."""
    return time.time_ns() // 1000


def metric_records(source: str, values: Iterable[tuple[str, float]], ts_ns: int, seq: int) -> list[Record]:
    """Counters as METRIC records, ``(tag, value)`` each, numbered from ``seq + 1``: one shape for every component."""
    return [Record(source, tag, float(value), Quality.GOOD, ts_ns, ts_ns, seq + i, Kind.METRIC)
            for i, (tag, value) in enumerate(values, 1)]
