"""The embedded durable store: stream manager's semantics in plain files, for running without Greengrass.

Collector, anomaly and publisher run as separate processes sharing one store folder. Writers of a stream serialise
on an ``flock`` of the stream's ``lock`` file and re-read the tail under it, so any number of processes may append.
Readers take no lock: they only read whole frames with a valid CRC. See ``segments.py`` for the file format.

Damaged bytes (a flipped bit, a bad sector) cost the messages they held and nothing else: whoever meets them first
(a reader, or a writer checking the newest segment) skips to the next valid frame, copies the damaged bytes to a
private file beside the segment and counts the messages lost in ``damage.json``, once per damaged run.

A full stream applies its strategy: OverwriteOldestData drops the oldest segments (counted as dropped), and
RejectNewData refuses the append unless segments every reader has committed past can go: those are freed then, and
only then, so read data stays for ``gatewayctl replay`` while there is room, and a stream whose readers all caught
up always accepts data again (counted as reclaimed, not dropped: nothing was lost). Which readers a stream has is
in :mod:`gateway.streams.reclaim`; time to live applies under both strategies (both in
:mod:`gateway.streams.retention`).

Layout::

    ROOT/streams/NAME/spec.json       the StreamSpec
    ROOT/streams/NAME/counters.json   dropped, rejected and reclaimed counts
    ROOT/streams/NAME/damage.json     messages lost to damaged bytes, bytes set aside, damaged runs seen
    ROOT/streams/NAME/<seq>.seg.damaged-<offset>   a damaged run's bytes, as found (0600)
    ROOT/streams/NAME/lock            flock target
    ROOT/streams/NAME/<seq>.seg       segments
    ROOT/positions/...                reader positions (positions.py)
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import shutil
import time
from pathlib import Path

from pydantic import ValidationError

from gateway.errors import ConfigError, StoreWriteError, StreamError, StreamNotFound
from gateway.fsutil import atomic_write
from gateway.streams import notify
from gateway.streams import segments as seg
from gateway.streams.base import Persistence, StoredMessage, StreamInfo, StreamSpec
from gateway.streams.locks import StreamLocks
from gateway.streams.places import Place, Places
from gateway.streams.retention import Retention, Tail, read_counters

log = logging.getLogger(__name__)


class EmbeddedStore:
    """File-backed streams shared safely between processes. See :class:`~gateway.streams.base.StreamStore`."""

    def __init__(self, root: str | Path, *, reclaim_committed: bool = True) -> None:
        """Open (creating) the store under ``root``.

        Args:
            root: the store folder; reader positions are under ``root/positions`` (:mod:`~gateway.streams.positions`).
            reclaim_committed: a full RejectNewData stream frees the segments every reader committed past. The
                stream manager stand-in turns it off: the real server deletes nothing because it was read.
        """
        self.root = Path(root)
        self.reclaim_committed = reclaim_committed
        self._streams = self.root / "streams"
        self._streams_dir = str(self._streams)  # the append path joins strings: a Path join costs ~2 us
        try:
            self._streams.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(
                f"cannot create the stream store at {self._streams}: {exc.strerror}",
                fix="point the store path at a writable folder on a disk with space",
                retryable=False,
            ) from exc
        self._locks = StreamLocks(self._streams, self._folder)
        self._tails: dict[str, Tail] = {}
        self._segs: dict[str, list[int]] = {}  # per stream, its segments as this process last listed or made them
        self._specs: dict[str, tuple[int, StreamSpec]] = {}
        self._places = Places()
        self._retention = Retention(self._streams, self.root / "positions")
        self._damage_known: set[tuple[str, int, int]] = set()
        self.corrupt_frames = 0  # damaged runs this process skipped

    # --- definition -----------------------------------------------------------------------------------------
    def create_stream(self, spec: StreamSpec) -> None:
        if spec.persistence is Persistence.MEMORY:
            raise ConfigError(
                f"stream {spec.name!r}: persistence Memory is not available in the embedded store",
                fix="use persistence File (the embedded store is shared between processes through files)",
            )
        if spec.name in (".", ".."):
            raise ConfigError(f"stream name {spec.name!r} is reserved", fix="choose another stream name")
        folder = self._streams / spec.name
        folder.mkdir(exist_ok=True)
        with self._locks.locked(spec.name):
            atomic_write(folder / "spec.json", spec.model_dump_json().encode())
            if not seg.list_segments(str(folder)):
                (folder / seg.segment_name(0)).touch()
        self._specs.pop(spec.name, None)

    def list_streams(self) -> list[str]:
        return sorted(p.name for p in self._streams.iterdir() if (p / "spec.json").exists())

    def delete_stream(self, stream: str) -> None:
        folder = self._folder(stream)
        with self._locks.locked(stream):
            tail = self._tails.pop(stream, None)
            if tail:
                os.close(tail.fd)
            self._segs.pop(stream, None)
            shutil.rmtree(folder)
        self._forget(stream)

    # --- append ---------------------------------------------------------------------------------------------
    def append(self, stream: str, payload: bytes) -> int:
        if len(payload) > seg.MAX_MESSAGE_BYTES:
            raise StreamError(
                f"message of {len(payload)} bytes for stream {stream!r} exceeds {seg.MAX_MESSAGE_BYTES} bytes",
                fix="write smaller batches",
            )
        spec = self._spec(stream)
        self._locks.lock(stream)  # not ``with self._locks.locked``: see StreamLocks.lock
        try:
            tail, listed = self._refresh_tail(stream)
            frame_len = seg.HEADER_SIZE + len(payload)
            tail = self._retention.make_room(stream, spec, tail, frame_len, self._segs[stream], listed=listed,
                                             reclaim_committed=self.reclaim_committed, rotate=self._rotate)
            if tail.size > 0 and tail.size + frame_len > spec.segment_size_bytes:
                tail = self._rotate(stream, tail)
                self._segs[stream].append(tail.first_seq)
            if spec.flush_on_write and tail.size + frame_len > tail.reserved:
                # The rest of the segment's disk blocks at once: each fdatasync then commits less (seg.reserve).
                tail.reserved = seg.reserve(tail.fd, tail.size, max(frame_len, spec.segment_size_bytes - tail.size))
            seq = tail.next_seq
            header = seg.frame_header(seq, int(time.time() * 1000), payload)
            try:
                # One writev: as atomic on O_APPEND as one write, without copying the payload behind the header.
                written = os.writev(tail.fd, (header, payload))
                if written != frame_len:
                    raise OSError(28, "short write")
                if spec.flush_on_write:
                    os.fdatasync(tail.fd)
            except OSError as exc:
                # Take back the partial frame so the stream stays readable; what was stored before is untouched.
                try:
                    os.ftruncate(tail.fd, tail.size)
                except OSError:
                    log.warning("stream %r: could not truncate a partial frame; the next writer will", stream)
                raise StoreWriteError(
                    f"append to stream {stream!r} failed: {exc.strerror or exc}",
                    fix=f"free disk space or fix permissions on {self._streams / stream}; the append can be retried",
                ) from exc
            tail.size += frame_len
            tail.next_seq += 1
            return seq
        finally:
            self._locks.unlock(stream)

    def _refresh_tail(self, stream: str) -> tuple[Tail, bool]:
        """Bring the cached tail up to date with what other processes appended (called under the lock); True when
        the folder was listed for it (``self._segs`` is then fresh).

        Without a listing when nothing changed since this process's last append: every append grows the tail
        file, every rotation creates the segment named after the next sequence number (a writer rotates only
        with an up-to-date tail), and a deleted stream unlinks it. So a tail of the size this process left it,
        still linked, with no segment after it, is still the stream's tail.
        """
        folder = os.path.join(self._streams_dir, stream)
        tail = self._tails.get(stream)
        if tail is not None and stream in self._segs:
            st = os.fstat(tail.fd)
            # os.access, not os.path.exists: the usual answer (no such file) then costs no exception (~10 us).
            if st.st_size == tail.size and st.st_nlink and tail.next_seq != tail.first_seq and \
                    not os.access(os.path.join(folder, seg.segment_name(tail.next_seq)), os.F_OK):
                return tail, False
        segs = self._segs[stream] = seg.list_segments(folder)
        if not segs:
            (self._streams / stream / seg.segment_name(0)).touch()
            segs.append(0)
        last = segs[-1]
        current = os.fstat(tail.fd) if tail is not None and tail.first_seq == last else None
        if tail is not None and current is not None and current.st_nlink:
            size = current.st_size
            if size == tail.size:
                return tail, True
            # Shrunk under us (by hand?): walk it all again, but never hand out a number twice.
            offset, next_seq = (tail.size, tail.next_seq) if size > tail.size else (0, last)
        else:
            if tail is not None:
                os.close(tail.fd)
            fd = os.open(os.path.join(folder, seg.segment_name(last)), os.O_RDWR | os.O_APPEND)
            tail = Tail(last, fd, 0, last)
            self._tails[stream] = tail
            size = os.fstat(fd).st_size
            offset, next_seq = 0, last
        found = seg.find_end(tail.fd, offset, next_seq, size)
        for damage in found.damage:
            self._record_damage(stream, last, tail.fd, damage)
        if found.end < size:
            log.warning(
                "stream %r: dropped %d bytes of an unacknowledged write at the end of segment %d "
                "(a writer stopped mid-append)", stream, size - found.end, last,
            )
            os.ftruncate(tail.fd, found.end)
        tail.size, tail.next_seq = found.end, max(found.next_seq, tail.next_seq)
        return tail, True

    def _rotate(self, stream: str, tail: Tail) -> Tail:
        path = self._streams / stream / seg.segment_name(tail.next_seq)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._retention.sealed(stream, tail.first_seq, tail.size)
        if tail.reserved > tail.size:
            seg.release(tail.fd)
        os.close(tail.fd)
        new = Tail(tail.next_seq, fd, 0, tail.next_seq)
        self._tails[stream] = new
        return new

    # --- read -----------------------------------------------------------------------------------------------
    def read(
        self, stream: str, start_seq: int, *, min_count: int = 1, max_count: int = 100, timeout_s: float = 0.0,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        folder = self._folder(stream)
        deadline = time.monotonic() + timeout_s
        pause = notify.Pause(str(folder))  # other processes append: the kernel says when (or we poll)
        out: list[StoredMessage] = []
        room = math.inf if max_bytes is None else max_bytes
        try:
            while True:
                nxt = out[-1].seq + 1 if out else start_seq
                got, room = self._read_once(stream, str(folder), nxt, max_count - len(out), room, not out)
                out.extend(got)
                if len(out) >= min_count or len(out) >= max_count or room < 0:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                pause.wait(remaining)
        finally:
            pause.close()

    def _read_once(self, stream: str, folder: str, start_seq: int, max_count: int, room: float, take_one: bool
                   ) -> tuple[list[StoredMessage], float]:
        """Messages from ``start_seq`` while their payloads fit in ``room`` bytes (the first of a read always), and
        the room left: below 0 once a message did not fit."""
        segs = seg.list_segments(folder)
        if not segs or max_count <= 0:
            return [], room
        start_seq = max(start_seq, segs[0])
        idx = bisect.bisect_right(segs, start_seq) - 1
        out: list[StoredMessage] = []
        cur = self._places.find(stream, segs[idx], start_seq)
        at = (cur.offset, cur.seq) if cur else None
        inode = -1  # of the file of segs[idx] once opened
        while idx < len(segs) and len(out) < max_count:
            first = segs[idx]
            sealed_next = segs[idx + 1] if idx + 1 < len(segs) else None
            try:
                fd = os.open(os.path.join(folder, seg.segment_name(first)), os.O_RDONLY)
            except FileNotFoundError:  # dropped by a writer between listing and opening: go on with the next
                if sealed_next is None:
                    break
                idx, at, cur = idx + 1, (0, sealed_next), None
                continue
            try:
                st = os.fstat(fd)
                size, inode = st.st_size, st.st_ino
                if cur is not None and not cur.holds(fd, inode, size):
                    at = None
                cur = None
                if at is None:
                    at = seg.locate(fd, first, max(start_seq, first), size, sealed_next)
                    if at is None:
                        break
                got, at, room = self._scan(stream, fd, first, at, size, max_count - len(out), sealed_next,
                                           room=room, take_one=take_one and not out, from_seq=start_seq)
                out.extend(m for m in got if m.seq >= start_seq)
                whole = at[0] >= size and room >= 0
            finally:
                os.close(fd)
            if len(out) >= max_count or sealed_next is None or not whole:
                break
            idx, at, inode = idx + 1, (0, sealed_next), -1
        if at is not None and idx < len(segs) and inode >= 0:
            asked = out[-1].seq + 1 if out else start_seq
            self._places.remember(stream, Place(at[1], segs[idx], at[0], asked, inode))
        return out, room

    def _scan(
        self, stream: str, fd: int, first: int, at: tuple[int, int], size: int, limit: int, sealed_next: int | None,
        *, room: float = math.inf, take_one: bool = True, from_seq: int = 0, locked: bool = False,
    ) -> tuple[list[StoredMessage], tuple[int, int], float]:
        """Messages of one segment from ``at`` (offset, expected seq), where the next read goes on, and the room
        left of ``room`` bytes: a message from ``from_seq`` on that does not fit stops the scan before it (room
        below 0), unless it is the first one and ``take_one``."""
        out: list[StoredMessage] = []
        taken = 0  # of them from from_seq on
        offset, expected = at
        for item in seg.scan(fd, offset, size, expected, limit, sealed_next):
            if isinstance(item, seg.Damage):
                if sealed_next is None and not locked:
                    # The newest segment may be mid-write (or a torn write mid-truncation): look again with the
                    # writers held off before calling anything damage.
                    with self._locks.locked(stream):
                        more, where, room = self._scan(
                            stream, fd, first, (offset, expected), os.fstat(fd).st_size, limit - len(out), None,
                            room=room, take_one=take_one and not taken, from_seq=from_seq, locked=True)
                    return out + more, where, room
                self._record_damage(stream, first, fd, item)
            else:
                if item.seq >= from_seq:
                    if len(item.payload) > room and not (take_one and not taken):
                        return out, (offset, expected), -1.0
                    room -= len(item.payload)
                    taken += 1
                out.append(StoredMessage(item.seq, item.ts_ms, item.payload))
            offset, expected = item.end, item.next_seq
        return out, (offset, expected), room

    def _record_damage(self, stream: str, segment: int, fd: int, damage: seg.Damage) -> None:
        """Set a damaged run's bytes aside and count its messages lost, once for all processes and restarts."""
        key = (stream, segment, damage.start)
        if key in self._damage_known:
            return
        self._damage_known.add(key)
        self.corrupt_frames += 1
        try:
            with self._locks.locked(stream):
                kept = seg.record_damage(self._streams / stream, segment, fd, damage)
        except OSError as exc:  # a read-only store (gatewayctl as another user), a full disk: skip, still read on
            log.error("stream %r: skipped %d damaged bytes at offset %d of segment %d (%d messages lost) but could "
                      "not record them: %s", stream, damage.end - damage.start, damage.start, segment, damage.lost, exc)
            return
        if kept is not None:
            log.error(
                "stream %r: %d damaged bytes at offset %d of segment %d: lost %d messages (seq %d to %d); "
                "the bytes are kept in %s. Check the disk (SMART, dmesg) and the power supply",
                stream, damage.end - damage.start, damage.start, segment, damage.lost, damage.first_seq,
                damage.next_seq - 1, kept,
            )

    # --- describe -------------------------------------------------------------------------------------------
    def describe(self, stream: str) -> StreamInfo:
        folder = self._folder(stream)
        spec = self._spec(stream)
        with self._locks.locked(stream):
            tail, _ = self._refresh_tail(stream)
            segs = self._segs[stream] = seg.list_segments(str(folder))
            total = sum(self._retention.sealed_size(stream, s) for s in segs[:-1]) + tail.size
            counters = read_counters(folder)
            damage = seg.read_damage(folder)
        return StreamInfo(
            stream, segs[0], tail.next_seq, total,
            counters.get("dropped_messages", 0), counters.get("rejected_appends", 0), spec,
            damage["lost_messages"], damage["corrupt_bytes"],
        )

    def close(self) -> None:
        with self._locks.mutex:
            for tail in self._tails.values():
                os.close(tail.fd)
            self._tails.clear()
            self._locks.close()

    # --- helpers --------------------------------------------------------------------------------------------
    def _folder(self, stream: str) -> Path:
        folder = self._streams / stream
        if not (folder / "spec.json").exists():
            known = ", ".join(self.list_streams()) or "none"
            raise StreamNotFound(
                f"stream {stream!r} does not exist in {self._streams} (streams: {known})",
                fix="check the stream name in the configuration, or start the component that creates it",
            )
        return folder

    def _spec(self, stream: str) -> StreamSpec:
        path = os.path.join(self._streams_dir, stream, "spec.json")  # one stat per append: no Path objects
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            self._folder(stream)  # raises StreamNotFound, naming the streams there
            mtime = os.stat(path).st_mtime_ns  # created meanwhile
        cached = self._specs.get(stream)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            spec = StreamSpec.model_validate_json(Path(path).read_bytes())
        except ValidationError as exc:
            raise StreamError(
                f"stream {stream!r}: its definition {path} is damaged ({exc.errors()[0]['msg']})",
                fix=f"restart the component that writes stream {stream!r}: it writes the definition again from its "
                "configuration; the stream's data is kept",
            ) from None
        self._specs[stream] = (mtime, spec)
        return spec

    def _forget(self, stream: str) -> None:
        self._specs.pop(stream, None)
        self._segs.pop(stream, None)
        self._places.forget(stream)
        self._locks.forget(stream)
        self._retention.forget(stream)
        self._damage_known = {k for k in self._damage_known if k[0] != stream}
