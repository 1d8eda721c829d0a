"""Where reads of the embedded store's streams ended: a read that goes on from one skips walking the segment.

A place is a fact about a segment file (message ``seq`` starts at ``offset``), true for every reader, so a read
from any of them starts there instead of walking the segment's headers from its start (``segments.locate``). A
stream keeps the last ``PER_STREAM`` places, most recent first: one per reader of it in this process is enough (a
publisher's destinations each read at their own position), where a single place made two readers take it from each
other at every poll (tests/streams/test_read_cursors.py). A place names its file's inode, so a stream that another
process deleted and made again is never read from the old file's offsets, and a place is used only when the
frame at its offset is its message (a new file may get the old one's inode number).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.streams.segments import HEADER, HEADER_SIZE

PER_STREAM = 16


@dataclass(frozen=True, slots=True)
class Place:
    seq: int  # the sequence number expected at offset
    segment: int
    offset: int
    asked: int  # reads from any sequence number in asked..seq start at offset (damage lost the ones between)
    inode: int  # of the segment's file: one made again by another process (the stream deleted) is another file

    def holds(self, fd: int, inode: int, size: int) -> bool:
        """Is this a place of the open segment file ``fd`` (``inode``, ``size`` bytes), with its message's frame at
        its offset, or the end of the data there? The file of a stream that another process deleted and made again
        may get the old file's inode number, so the frame is looked at too (one header read)."""
        if self.inode != inode:
            return False
        if self.offset + HEADER_SIZE > size:
            return self.offset <= size  # at the end (or a frame still being written): the next one goes there
        return bool(HEADER.unpack(os.pread(fd, HEADER_SIZE, self.offset))[2] == self.seq)


class Places:
    """The places of every stream read through one store."""

    def __init__(self) -> None:
        self._by_stream: dict[str, list[Place]] = {}

    def find(self, stream: str, segment: int, start_seq: int) -> Place | None:
        """A place in ``segment`` from which a read of ``start_seq`` on starts, if one is known."""
        return next((p for p in self._by_stream.get(stream, ()) if p.segment == segment
                     and p.asked <= start_seq <= p.seq), None)

    def remember(self, stream: str, place: Place) -> None:
        """Note where a read ended: first, one place per offset (readers caught up at one message share it), the
        oldest beyond ``PER_STREAM`` forgotten."""
        old = self._by_stream.get(stream, [])
        self._by_stream[stream] = [place, *(p for p in old if (p.segment, p.offset) != (place.segment, place.offset))
                                   ][:PER_STREAM]

    def forget(self, stream: str) -> None:
        self._by_stream.pop(stream, None)
