"""Segment files of the embedded store: the frame format and the scans over it.

A stream is a folder of segment files named after the sequence number of their first message
(``00000000000000000000.seg``). A segment is a run of frames::

    u32 payload length | u32 crc32 | u64 seq | u64 ingest time (ms) | payload

all big-endian; the CRC covers seq, time and payload. Frames are written with one ``write`` on an ``O_APPEND``
descriptor while holding the stream's lock, so a crash leaves at most one incomplete frame at the very end of the
newest segment; the next writer truncates it (it was never acknowledged).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct(">IIQQ")
HEADER_SIZE = HEADER.size
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SUFFIX = ".seg"
_CHUNK = 1024 * 1024


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def list_segments(folder: str) -> list[int]:
    """First sequence numbers of the segments in ``folder``, oldest first."""
    out = []
    for name in os.listdir(folder):
        if name.endswith(SUFFIX) and len(name) == 20 + len(SUFFIX) and name[:20].isdigit():
            out.append(int(name[:20]))
    out.sort()
    return out


def encode_frame(seq: int, ts_ms: int, payload: bytes) -> bytes:
    tail = struct.pack(">QQ", seq, ts_ms)
    crc = zlib.crc32(payload, zlib.crc32(tail))
    return struct.pack(">II", len(payload), crc) + tail + payload


def frame_ok(seq: int, ts_ms: int, crc: int, payload: bytes) -> bool:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">QQ", seq, ts_ms))) == crc


def find_end(fd: int, offset: int, expected_seq: int, size: int) -> tuple[int, int]:
    """Walk frame headers from ``offset`` and return (end of the last whole frame, next sequence number).

    Only headers are read, except for the last whole frame, whose CRC is checked: that is where a crash (or a
    power loss that left zeros) would show. A header that does not continue the sequence ends the walk too.
    """
    seq = expected_seq
    last: int | None = None
    while offset + HEADER_SIZE <= size:
        length, _crc, fseq, _ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))
        end = offset + HEADER_SIZE + length
        if fseq != seq or length > MAX_MESSAGE_BYTES or end > size:
            break
        last, offset, seq = offset, end, seq + 1
    if last is not None:
        length, crc, fseq, ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, last))
        if not frame_ok(fseq, ts, crc, os.pread(fd, length, last + HEADER_SIZE)):
            return last, seq - 1
    return offset, seq


def offset_of(fd: int, first_seq: int, target_seq: int, size: int) -> int | None:
    """Byte offset of message ``target_seq`` in a segment starting at ``first_seq`` (None if not there yet)."""
    offset, seq = 0, first_seq
    while seq < target_seq:
        if offset + HEADER_SIZE > size:
            return None
        length = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))[0]
        offset += HEADER_SIZE + length
        seq += 1
    return offset


@dataclass(slots=True)
class Frame:
    seq: int
    ts_ms: int
    payload: bytes
    valid: bool
    end: int


def iter_frames(fd: int, offset: int, size: int, limit: int) -> Iterator[Frame]:
    """Yield up to ``limit`` whole frames from ``offset``; stop at the first incomplete one.

    Invalid frames (CRC mismatch) are yielded with ``valid=False`` so the caller can count and skip them. A header
    that cannot be a frame (length beyond the file or the limit) ends the walk with one invalid frame that ends at
    ``size``: the rest of the segment is unreadable.
    """
    buf = b""
    buf_start = offset
    count = 0
    while count < limit and offset + HEADER_SIZE <= size:
        rel = offset - buf_start
        if rel + HEADER_SIZE > len(buf):
            buf, buf_start, rel = os.pread(fd, min(_CHUNK, size - offset), offset), offset, 0
        length, crc, seq, ts = HEADER.unpack_from(buf, rel)
        end = offset + HEADER_SIZE + length
        if length > MAX_MESSAGE_BYTES:
            yield Frame(seq, ts, b"", False, size)
            return
        if end > size:
            return
        if rel + HEADER_SIZE + length > len(buf):
            buf, buf_start, rel = os.pread(fd, max(_CHUNK, HEADER_SIZE + length), offset), offset, 0
        payload = buf[rel + HEADER_SIZE : rel + HEADER_SIZE + length]
        yield Frame(seq, ts, payload, frame_ok(seq, ts, crc, payload), end)
        offset = end
        count += 1
