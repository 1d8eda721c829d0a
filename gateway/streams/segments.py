"""Segment files of the embedded store: the frame format and the scans over it.

A stream is a folder of segment files named after the sequence number of their first message
(``00000000000000000000.seg``). A segment is a run of frames::

    u32 payload length | u32 crc32 | u64 seq | u64 ingest time (ms) | payload

all big-endian; the CRC covers seq, time and payload. Frames are written with one ``writev`` (header, payload) on
an ``O_APPEND`` descriptor while holding the stream's lock, so a crash leaves at most one incomplete frame at the very
end of the newest segment; the next writer truncates it (it was never acknowledged).

Anything else that fails its checks is damage (a flipped bit, a bad sector), not a torn write: :func:`scan` skips
it by resynchronising on the next frame whose CRC holds and whose sequence number fits, and reports the damaged
bytes and the messages they held as a :class:`Damage`. Damage never moves the sequence backwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from gateway.fsutil import atomic_write

HEADER = struct.Struct(">IIQQ")
HEADER_SIZE = HEADER.size
_SEQ_TS = struct.Struct(">QQ")  # the part of a header the CRC covers, with the payload
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SUFFIX = ".seg"
_CHUNK = 1024 * 1024
_SEQ_AT = 8  # offset of the sequence number in a header
_PREFIX = 5  # resync searches for the top bytes of the sequence numbers a frame may carry


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


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "fallocate64", None)  # the 64-bit offset variant: off_t is 32 bits on 32-bit ARM
    if fn is None and ctypes.sizeof(ctypes.c_long) == 8:
        fn = getattr(libc, "fallocate", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_FALLOCATE = _fallocate()
_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE
RESERVE_MAX = 64 * 1024 * 1024  # reserved at once at most (a stream may have large segments)


def reserve(fd: int, offset: int, length: int) -> int:
    """Allocate disk blocks for bytes ``[offset, offset + length)`` of a segment (at most ``RESERVE_MAX``) without
    changing its size; returns the end of the range tried, whether it could be reserved or not.

    An fdatasync after an append into reserved blocks commits less to the file system's journal than one after an
    append that needs new blocks (ext4: 58-86 us of a 330-500 us durable 5 KB append, issue 18); reserving a whole
    segment at once measured faster than in 256 KiB-4 MiB steps. The file's size, so what readers see, does not
    change. Where it is not possible (not Linux, a file system without fallocate, a full disk) appends allocate as
    they go, as before: the caller does not try again before the returned end.
    """
    length = min(length, RESERVE_MAX)
    if _FALLOCATE is not None:
        _FALLOCATE(fd, _KEEP_SIZE, offset, length)
    return offset + length


def release(fd: int) -> None:
    """Free what :func:`reserve` allocated beyond a sealed segment's end, keeping its time of last write.

    Truncating a file to its own size frees the blocks past its end but sets its modification time, which time to
    live reads as the age of the newest message: it is put back. Best effort: blocks left (a file system that keeps
    them, a store folder of another owner) cost disk space, never data.
    """
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        os.ftruncate(fd, st.st_size)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _crc(seq: int, ts_ms: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_SEQ_TS.pack(seq, ts_ms)))


def frame_header(seq: int, ts_ms: int, payload: bytes) -> bytes:
    """The header of the frame carrying ``payload``; the frame is the header followed by the payload."""
    return HEADER.pack(len(payload), _crc(seq, ts_ms, payload), seq, ts_ms)


def encode_frame(seq: int, ts_ms: int, payload: bytes) -> bytes:
    return frame_header(seq, ts_ms, payload) + payload


def frame_ok(seq: int, ts_ms: int, crc: int, payload: bytes) -> bool:
    return _crc(seq, ts_ms, payload) == crc


@dataclass(slots=True)
class Frame:
    """A whole frame whose CRC holds."""

    seq: int
    ts_ms: int
    payload: bytes
    end: int

    @property
    def next_seq(self) -> int:
        return self.seq + 1


@dataclass(slots=True)
class Damage:
    """Bytes ``[start, end)`` that hold no valid frame; messages ``first_seq .. next_seq - 1`` were in them."""

    start: int
    end: int
    first_seq: int
    next_seq: int

    @property
    def lost(self) -> int:
        return self.next_seq - self.first_seq


def scan(
    fd: int, offset: int, size: int, expected: int, limit: int, sealed_next: int | None = None
) -> Iterator[Frame | Damage]:
    """Yield up to ``limit`` valid frames from ``offset`` (a frame boundary), and the damage between them.

    A frame that fails (bad CRC, impossible length, sequence number below ``expected``) starts a damaged run that
    ends at the next valid frame (:func:`resync`). When no valid frame follows, the run is the segment's tail: in
    the newest segment (``sealed_next`` None) that may be a write in progress or a torn one, so the scan stops
    there; in a sealed segment it is damage up to the end, holding the messages up to ``sealed_next``, the first
    sequence number of the next segment.
    """
    buf = b""
    buf_start = offset
    count = 0
    while count < limit and offset < size:
        rel = offset - buf_start
        if rel + HEADER_SIZE > len(buf) and offset + HEADER_SIZE <= size:
            buf, buf_start, rel = os.pread(fd, _first_read(fd, offset, size, limit - count), offset), offset, 0
        if rel + HEADER_SIZE <= len(buf):
            length, crc, seq, ts = HEADER.unpack_from(buf, rel)
            end = offset + HEADER_SIZE + length
            if length <= MAX_MESSAGE_BYTES and end <= size and seq >= expected:
                if rel + HEADER_SIZE + length > len(buf):
                    want = min(max(HEADER_SIZE + length, _read_size(length, limit - count)), size - offset)
                    buf, buf_start, rel = os.pread(fd, want, offset), offset, 0
                payload = buf[rel + HEADER_SIZE : rel + HEADER_SIZE + length]
                if frame_ok(seq, ts, crc, payload):
                    yield Frame(seq, ts, payload, end)
                    offset, expected = end, seq + 1
                    count += 1
                    continue
        found = resync(fd, offset, size, expected)
        if found is None:
            break
        yield Damage(offset, found[0], expected, found[1])
        offset, expected = found
        buf, buf_start = b"", offset
    if count < limit and offset < size and sealed_next is not None:
        yield Damage(offset, size, expected, max(expected, sealed_next))


def _read_size(length: int, frames: int) -> int:
    """Bytes to read for the next ``frames`` frames when the next is ``length`` long: as many frames of its size and
    a header, at most a chunk.

    A reader's poll asks for 100 messages: read by the chunk (1 MiB), it copied twice the 0.5 MiB that 100 batches
    of 100 values take, ~10 % of the store's part of a read (issue 18). The messages of a stream are mostly alike in
    size; when they are not, the buffer runs out sooner and the next read is sized the same way.
    """
    return min(_CHUNK, frames * (HEADER_SIZE + length) + HEADER_SIZE)


def _first_read(fd: int, offset: int, size: int, frames: int) -> int:
    """:func:`_read_size` at ``offset``, which costs reading the header there first (unless the chunk is small)."""
    rest = min(_CHUNK, size - offset)
    if frames * HEADER_SIZE >= rest:
        return rest
    length = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))[0]
    return rest if length > MAX_MESSAGE_BYTES else min(rest, _read_size(length, frames))


def resync(fd: int, start: int, size: int, expected: int) -> tuple[int, int] | None:
    """(offset, seq) of the first valid frame after ``start``, or None.

    Valid: the CRC holds and the sequence number is at least ``expected`` and at most one message per header's
    worth of skipped bytes beyond it. Only positions whose sequence number field starts with the top bytes of such
    a number are examined, which ``bytes.find`` locates at C speed.
    """
    top = expected + (size - start) // HEADER_SIZE
    shift = 8 * (8 - _PREFIX)
    prefixes = [struct.pack(">Q", p << shift)[:_PREFIX] for p in range(expected >> shift, (top >> shift) + 1)]
    pos = start + 1
    while pos + HEADER_SIZE <= size:
        window = os.pread(fd, min(_CHUNK, size - pos), pos)
        best: tuple[int, int] | None = None
        for prefix in prefixes:
            i = window.find(prefix, _SEQ_AT)
            while i != -1 and i - _SEQ_AT + HEADER_SIZE <= len(window):
                at = pos + i - _SEQ_AT
                if best is not None and at >= best[0]:
                    break
                seq = _valid_at(fd, window, i - _SEQ_AT, at, size, expected, start)
                if seq is not None:
                    best = (at, seq)
                    break
                i = window.find(prefix, i + 1)
        if best is not None:
            return best
        pos += len(window) - HEADER_SIZE + 1
    return None


def _valid_at(fd: int, window: bytes, rel: int, at: int, size: int, expected: int, start: int) -> int | None:
    length, crc, seq, ts = HEADER.unpack_from(window, rel)
    if length > MAX_MESSAGE_BYTES or at + HEADER_SIZE + length > size:
        return None
    if not expected <= seq <= expected + (at - start) // HEADER_SIZE:
        return None
    body = rel + HEADER_SIZE
    payload = window[body : body + length] if body + length <= len(window) else os.pread(fd, length, at + HEADER_SIZE)
    return seq if frame_ok(seq, ts, crc, payload) else None


@dataclass(slots=True)
class Tail:
    """What the writer found after ``offset`` in the newest segment."""

    end: int  # where the next frame goes; below the file size when a torn write must be cut off
    next_seq: int
    damage: list[Damage]


def find_end(fd: int, offset: int, expected_seq: int, size: int) -> Tail:
    """Walk frames from ``offset`` (a frame boundary) to the end of the newest segment.

    The common case reads only headers and checks the CRC of the last frame, where a crash would show. Anything
    else gets the full :func:`scan`, and what follows its last valid frame is classified by :func:`_tail_kind`.
    """
    seq = expected_seq
    start = offset
    last: int | None = None
    while offset + HEADER_SIZE <= size:
        length, _crc, fseq, _ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))
        end = offset + HEADER_SIZE + length
        if fseq != seq or length > MAX_MESSAGE_BYTES or end > size:
            break
        last, offset, seq = offset, end, seq + 1
    if offset == size:
        if last is None:
            return Tail(size, seq, [])
        length, crc, fseq, ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, last))
        if frame_ok(fseq, ts, crc, os.pread(fd, length, last + HEADER_SIZE)):
            return Tail(size, seq, [])
    damage: list[Damage] = []
    offset, seq = start, expected_seq
    for item in scan(fd, start, size, expected_seq, limit=1 << 62):
        if isinstance(item, Damage):
            damage.append(item)
        offset, seq = item.end, item.next_seq
    if offset < size and _whole_but_damaged(fd, offset, size, seq):
        damage.append(Damage(offset, size, seq, seq + 1))
        return Tail(size, seq + 1, damage)
    return Tail(offset, seq, damage)


def _whole_but_damaged(fd: int, offset: int, size: int, seq: int) -> bool:
    """Is the failing last frame at ``offset`` a whole frame with one bad field, rather than a torn write?

    A torn write is a prefix of a frame: its header is intact and says it ends beyond the file. A frame that was
    written whole (so may have been acknowledged) ends exactly at the file's end with its sequence number, or would
    check out but for its length or its sequence number field. Its number is spent: reusing it could hand a
    reader that already saw it a different message under the same number.
    """
    if size - offset < HEADER_SIZE:
        return False
    length, crc, fseq, ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))
    whole = offset + HEADER_SIZE + length == size
    if whole and fseq == seq:
        return True  # bad CRC, time or payload
    rest = os.pread(fd, min(size - offset - HEADER_SIZE, MAX_MESSAGE_BYTES), offset + HEADER_SIZE)
    if fseq == seq and size - offset - HEADER_SIZE <= MAX_MESSAGE_BYTES and frame_ok(seq, ts, crc, rest):
        return True  # bad length
    return whole and frame_ok(seq, ts, crc, rest)  # bad sequence number


def locate(fd: int, first_seq: int, target_seq: int, size: int, sealed_next: int | None) -> tuple[int, int] | None:
    """(offset, expected seq) from which a scan yields message ``target_seq`` on, or None if it is not there yet.

    Walks headers while they count up from ``first_seq`` and the walk lands on the target's header (or at the end
    after a frame whose CRC holds: a damaged length can jump over good frames); otherwise scans.
    """
    offset, seq, last = 0, first_seq, -1
    while seq < target_seq and offset + HEADER_SIZE <= size:
        length, _crc, fseq, _ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))
        if fseq != seq or length > MAX_MESSAGE_BYTES or offset + HEADER_SIZE + length > size:
            break
        last, offset, seq = offset, offset + HEADER_SIZE + length, seq + 1
    else:
        if offset + HEADER_SIZE <= size and seq == target_seq:
            if HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))[2] == seq:
                return offset, seq
        elif last < 0 or _crc_holds(fd, last):
            return (offset, seq) if seq == target_seq else None
    offset, seq = 0, first_seq
    for item in scan(fd, 0, size, first_seq, limit=1 << 62, sealed_next=sealed_next):
        if item.next_seq > target_seq:
            return offset, seq  # the frame or damage that holds the target starts here
        offset, seq = item.end, item.next_seq
    return (offset, seq) if seq >= target_seq else None


def _crc_holds(fd: int, offset: int) -> bool:
    length, crc, seq, ts = HEADER.unpack(os.pread(fd, HEADER_SIZE, offset))
    return frame_ok(seq, ts, crc, os.pread(fd, length, offset + HEADER_SIZE))


class DamageBook(TypedDict):
    """A stream's ``damage.json``: cumulative counts, and the damaged runs already counted ("segment:offset")."""

    lost_messages: int
    corrupt_bytes: int
    regions: dict[str, int]


def read_damage(folder: Path) -> DamageBook:
    book: DamageBook = {"lost_messages": 0, "corrupt_bytes": 0, "regions": {}}
    try:
        data = json.loads((folder / "damage.json").read_bytes())
        book = {"lost_messages": int(data["lost_messages"]), "corrupt_bytes": int(data["corrupt_bytes"]),
                "regions": {str(k): int(v) for k, v in data["regions"].items()}}
    except FileNotFoundError:
        pass
    except (ValueError, TypeError, KeyError, AttributeError):
        pass  # the book itself damaged: counting starts again rather than stopping every reader
    return book


def record_damage(folder: Path, segment: int, fd: int, damage: Damage) -> Path | None:
    """Copy a damaged run of segment ``segment`` (open as ``fd``) beside it and count it (under the stream's lock).

    Returns the copy's path, or None when the run was counted before (by any process, before any restart).
    """
    book = read_damage(folder)
    region = f"{segment}:{damage.start}"
    if region in book["regions"]:
        return None
    path = folder / f"{segment_name(segment)}.damaged-{damage.start:012d}"
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # private whatever the umask: it may hold anything the stream held
        f.write(os.pread(fd, damage.end - damage.start, damage.start))
    book["regions"][region] = damage.lost
    book["lost_messages"] += damage.lost
    book["corrupt_bytes"] += damage.end - damage.start
    atomic_write(folder / "damage.json", json.dumps(book).encode())
    return path
