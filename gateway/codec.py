"""Versioned batch codec: many records in one stream message.

Stream manager messages are bytes and cost a round trip each, so a collector writes one message per scan batch.

Format version 2 (issue #16)::

    b"FE" | u8 version (=2) | CBOR [strings, rows]
    strings: [str, ...]                 every distinct source and tag name once
    rows:    [[source_index, tag_index, value, quality, source_ts_ns, gateway_ts_ns, seq, kind, status, flags], ...]

    value:   null, bool, int (int64 or uint64), float (finite), text, or a CBOR array / map (text keys) of those,
             nested at most gateway.record.MAX_VALUE_DEPTH deep
    status:  the protocol's status code, uint32 (0 when Good); flags: gateway.record.Flag bits, uint32

Format version 1 is version 2 without ``status`` and ``flags`` (rows of 8 fields) and with scalar values only. The
writer still writes version 1 for a batch that needs nothing of version 2 (all status and flags 0, no list or dict
value, no META record), so that a component not yet upgraded (Greengrass deploys components one by one) reads what
an upgraded one writes as long as the new fields are not used; the reader reads both.

Interning names keeps a batch of 100 values of one source near 40 bytes a record. A reader meeting an unknown
version raises :class:`CodecError` naming the version, so an old gateway never misreads a newer writer's data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import chain
from typing import Any

import cbor2

from gateway.errors import CodecError
from gateway.record import Kind, Quality, Record, json_problem

MAGIC = b"FE"
VERSION = 2
VERSIONS = (1, 2)  # what this reader reads
_HEADERS = {v: MAGIC + bytes([v]) for v in VERSIONS}
_ROW_FIELDS = {1: 8, 2: 10}
_QUALITIES = tuple(Quality)
_KINDS = tuple(Kind)
_V1_KINDS = 4  # VALUE, SCORE, ALARM, METRIC: META is new in version 2
_META = int(Kind.META)
_JSON_TYPES = (list, dict)
_INT_END = 2**63  # timestamps and sequence numbers are int64 everywhere (stream manager, SiteWise, Kinesis)
_INT_MIN, _UINT_END = -(2**63), 2**64  # values: int64 and uint64 (OPC UA UInt64) both occur
_U32_END = 2**32  # status codes and flag sets
_SCALAR_TYPES = {type(None), bool, int, float, str}
_VALUE_TYPES = {1: _SCALAR_TYPES, 2: _SCALAR_TYPES | {list, dict}}


def encode_batch(records: Iterable[Record]) -> bytes:
    """Encode records into one message: version 1 when no record needs version 2, else version 2."""
    batch = records if isinstance(records, list) else list(records)
    index: dict[str, int] = {}
    rows = []
    for r in batch:
        si = index.setdefault(r.source, len(index))
        ti = index.setdefault(r.tag, len(index))
        rows.append([si, ti, r.value, int(r.quality), r.source_ts_ns, r.gateway_ts_ns, r.seq, int(r.kind)])
    if not any(r.status or r.flags or r.kind == _META or type(r.value) in _JSON_TYPES for r in batch):
        return _HEADERS[1] + cbor2.dumps([list(index), rows])
    for row, r in zip(rows, batch, strict=True):
        row += (int(r.status), int(r.flags))
    return _HEADERS[2] + cbor2.dumps([list(index), rows])


def decode_batch(message: bytes) -> list[Record]:
    """Decode one message; raise :class:`CodecError` for anything that is not a valid batch."""
    if len(message) < 3 or message[:2] != MAGIC:
        raise CodecError(
            f"message of {len(message)} bytes is not a record batch (bad magic)",
            fix="only gateway components may write to gateway streams; the message is skipped",
        )
    version = message[2]
    if version not in VERSIONS:
        raise CodecError(
            f"record batch version {version} is not supported (this gateway reads versions "
            f"{', '.join(map(str, VERSIONS))})",
            fix="upgrade this component to the version of the writer",
        )
    try:
        doc = cbor2.loads(message[3:])
    except (ValueError, TypeError, IndexError, KeyError, EOFError, OverflowError, RecursionError,
            cbor2.CBORDecodeError) as exc:
        raise _corrupt(message, str(exc)) from exc
    return _records(doc, message, version)


def _records(doc: Any, message: bytes, version: int) -> list[Record]:
    """The records of a decoded batch, every field checked for its type and range.

    A CRC-valid message can still be poison (a bug in a writer, a hostile process with access to the store): an
    infinite timestamp, a CBOR semantic tag that decodes to a regex or a datetime, a name that is not text. Such a
    message is refused whole with :class:`CodecError`, so that every reader skips it, counts it and dead-letters it,
    instead of crashing or wedging on it.
    """
    if type(doc) is not list or len(doc) != 2 or type(doc[0]) is not list or type(doc[1]) is not list:
        raise _corrupt(message, "not [strings, rows]")
    strings, rows = doc
    if not set(map(type, strings)) <= {str}:
        raise _corrupt(message, "a source or tag name is not text")
    if not rows:
        return []
    # Checked a column at a time with builtins (C loops): a per-row Python check cost 15 % of read throughput.
    fields = _ROW_FIELDS[version]
    if not set(map(type, rows)) <= {list} or {len(r) for r in rows} != {fields}:
        raise _corrupt(message, f"a row is not {fields} fields")
    columns = list(zip(*rows, strict=True))
    si, ti, values, q, sts, gts, seq, kind = columns[:8]
    status: tuple[Any, ...] = columns[8] if version >= 2 else ()
    flags: tuple[Any, ...] = columns[9] if version >= 2 else ()
    if set(map(type, chain(si, ti, q, kind, sts, gts, seq, status, flags))) != {int}:  # chain: no joined copy
        raise _corrupt(message, "a name index, quality, kind, timestamp, sequence number, status or flag set is not "
                       "an integer")
    checks = [(si, len(strings), "a name index"), (ti, len(strings), "a name index"),
              (sts, _INT_END, "a source timestamp"), (gts, _INT_END, "a gateway timestamp"),
              (seq, _INT_END, "a sequence number"), (q, len(_QUALITIES), "a quality"),
              (kind, len(_KINDS) if version >= 2 else _V1_KINDS, "a kind")]
    if version >= 2:
        checks += [(status, _U32_END, "a status code"), (flags, _U32_END, "a flag set")]
    for column, end, what in checks:
        if min(column) < 0 or max(column) >= end:
            raise _corrupt(message, f"{what} is outside [0, {end})")
    _check_values(values, message, version)
    if version == 1:
        return [Record(strings[a], strings[b], v, _QUALITIES[c], d, e, f, _KINDS[g])
                for a, b, v, c, d, e, f, g in rows]
    return [Record(strings[a], strings[b], v, _QUALITIES[c], d, e, f, _KINDS[g], h, i)
            for a, b, v, c, d, e, f, g, h, i in rows]


def _check_values(values: tuple[Any, ...], message: bytes, version: int) -> None:
    types = set(map(type, values))
    allowed = _VALUE_TYPES[version]
    if not types <= allowed:
        odd = ", ".join(sorted(t.__name__ for t in types - allowed))
        what = "numbers, booleans, text, null" + (", arrays and maps of them" if version >= 2 else "")
        raise _corrupt(message, f"a value of type {odd} (only {what})")
    if list in types or dict in types:
        for v in values:
            if type(v) is list or type(v) is dict:
                problem = json_problem(v)
                if problem is not None:
                    raise _corrupt(message, f"an array or map value: {problem}")
    if float in types:
        floats = [v for v in values if type(v) is float]
        if not all(map(math.isfinite, floats)):
            raise _corrupt(message, "a value is NaN or infinite (writers make such values BAD with no value)")
    if int in types:
        ints = [v for v in values if type(v) is int]
        if min(ints) < _INT_MIN or max(ints) >= _UINT_END:
            raise _corrupt(message, "an integer value is outside the 64-bit range")


def _corrupt(message: bytes, why: str) -> CodecError:
    return CodecError(f"corrupt record batch ({len(message)} bytes): {why}",
                      fix="the message is skipped, counted and dead-lettered; check the writer or the disk if this "
                      "repeats")
