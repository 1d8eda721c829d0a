"""Versioned batch codec: many records in one stream message.

Stream manager messages are bytes and cost a round trip each, so a collector writes one message per scan batch.

Format version 1::

    b"FE" | u8 version (=1) | CBOR [strings, rows]
    strings: [str, ...]                 every distinct source and tag name once
    rows:    [[source_index, tag_index, value, quality, source_ts_ns, gateway_ts_ns, seq, kind], ...]

Interning names keeps a batch of 100 values of one source near 40 bytes a record. A reader meeting an unknown
version raises :class:`CodecError` naming the version, so an old gateway never misreads a newer writer's data.
"""

from __future__ import annotations

from collections.abc import Iterable

import cbor2

from gateway.errors import CodecError
from gateway.record import Kind, Quality, Record

MAGIC = b"FE"
VERSION = 1
_HEADER = MAGIC + bytes([VERSION])
_QUALITIES = tuple(Quality)
_KINDS = tuple(Kind)


def encode_batch(records: Iterable[Record]) -> bytes:
    """Encode records into one message."""
    index: dict[str, int] = {}
    rows = []
    for r in records:
        si = index.setdefault(r.source, len(index))
        ti = index.setdefault(r.tag, len(index))
        rows.append([si, ti, r.value, int(r.quality), r.source_ts_ns, r.gateway_ts_ns, r.seq, int(r.kind)])
    return _HEADER + cbor2.dumps([list(index), rows])


def decode_batch(message: bytes) -> list[Record]:
    """Decode one message; raise :class:`CodecError` for anything that is not a valid batch."""
    if len(message) < 3 or message[:2] != MAGIC:
        raise CodecError(
            f"message of {len(message)} bytes is not a record batch (bad magic)",
            fix="only gateway components may write to gateway streams; the message is skipped",
        )
    if message[2] != VERSION:
        raise CodecError(
            f"record batch version {message[2]} is not supported (this gateway reads version {VERSION})",
            fix="upgrade this component to the version of the writer",
        )
    try:
        strings, rows = cbor2.loads(message[3:])
        return [
            Record(
                strings[si], strings[ti], value, _QUALITIES[q], int(sts), int(gts), int(seq), _KINDS[kind]
            )
            for si, ti, value, q, sts, gts, seq, kind in rows
        ]
    except (ValueError, TypeError, IndexError, KeyError, EOFError, cbor2.CBORDecodeError) as exc:
        raise CodecError(
            f"corrupt record batch ({len(message)} bytes): {exc}",
            fix="the message is skipped and counted; check the disk if this repeats",
        ) from exc
