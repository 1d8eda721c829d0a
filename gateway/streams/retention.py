"""Retention of the embedded store's streams: time to live, max size and the full-stream strategies.

Before every append (under the stream's lock) :meth:`Retention.make_room` drops segments older than the time to
live, then, if the append would take the stream over its max size, applies the stream's strategy:
OverwriteOldestData drops the oldest segments (counted as dropped); RejectNewData frees the segments every reader
has committed past (counted as reclaimed, see :mod:`gateway.streams.reclaim`) and refuses the append if that is not
enough (counted as rejected). The counts live in ``counters.json`` beside the stream's segments.

Logs under ``gateway.streams.embedded``: this is the embedded store's behaviour, split out for size only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StreamFull
from gateway.fsutil import atomic_write
from gateway.streams import segments as seg
from gateway.streams.base import StrategyOnFull, StreamSpec
from gateway.streams.reclaim import committed_positions, full_fix

log = logging.getLogger("gateway.streams.embedded")


@dataclass(slots=True)
class Tail:
    """The open (newest) segment of a stream, as this process knows it."""

    first_seq: int
    fd: int
    size: int
    next_seq: int
    reserved: int = 0  # the end of the disk blocks this process reserved for it (segments.reserve)


Rotate = Callable[[str, Tail], Tail]
"""Seals a stream's open segment and returns the new, empty one (the store's, called under the lock)."""


class Retention:
    """Time to live and max size of the streams in one folder, and the sealed segments' sizes it sums."""

    def __init__(self, streams: Path, positions: Path) -> None:
        """Args:
        streams: the folder holding one folder per stream.
        positions: the reader positions' folder (:mod:`gateway.streams.positions`).
        """
        self._streams = streams
        self._streams_dir = str(streams)  # for the per-append check: a Path join costs ~2 us
        self._positions = positions
        self._sealed_sizes: dict[tuple[str, int], int] = {}

    def make_room(
        self, stream: str, spec: StreamSpec, tail: Tail, frame_len: int, segs: list[int], *, listed: bool,
        reclaim_committed: bool, rotate: Rotate,
    ) -> Tail:
        """Apply time to live and max size before an append (called under the lock); returns the tail to write to.

        ``segs`` is the stream's segments as the store knows them, updated here in place; ``listed`` says the folder
        was just listed for them. Not listed, they may miss what another writer freed without appending after (an
        append it then failed): before anything is dropped, freed or refused, the folder is listed again.
        """
        if not listed:
            if not self._must_act(stream, spec, tail, frame_len, segs):
                return tail  # what follows would find the same (the usual append)
            segs[:] = seg.list_segments(str(self._streams / stream))
        folder = self._streams / stream
        now = time.time()
        if spec.ttl_s is not None:
            while len(segs) > 1:
                sealed = folder / seg.segment_name(segs[0])
                if sealed.stat().st_mtime >= now - spec.ttl_s:
                    break
                self._drop_oldest(stream, segs, "time to live")
        sealed_total = sum(self.sealed_size(stream, s) for s in segs[:-1])
        if sealed_total + tail.size + frame_len <= spec.max_size_bytes:
            return tail
        if spec.strategy_on_full is StrategyOnFull.REJECT_NEW_DATA:
            positions = committed_positions(self._positions, stream) if reclaim_committed else {}
            if positions:
                tail, sealed_total = self._reclaim(stream, segs, tail, sealed_total, frame_len, spec.max_size_bytes,
                                                   min(positions.values()), rotate)
                if sealed_total + tail.size + frame_len <= spec.max_size_bytes:
                    return tail
            bump_counter(folder, "rejected_appends", 1)
            raise StreamFull(
                f"stream {stream!r} is full ({sealed_total + tail.size} of {spec.max_size_bytes} bytes, "
                "RejectNewData): append refused and counted",
                fix=full_fix(positions),
            )
        while segs[:-1] and sealed_total + tail.size + frame_len > spec.max_size_bytes:
            sealed_total -= self.sealed_size(stream, segs[0])
            self._drop_oldest(stream, segs, "max size (OverwriteOldestData)")
        return tail

    def _must_act(self, stream: str, spec: StreamSpec, tail: Tail, frame_len: int, segs: list[int]) -> bool:
        """Whether the append needs segments dropped or freed, or fails, going by ``segs`` (True also when one of
        them is gone)."""
        try:
            if spec.ttl_s is not None and len(segs) > 1:
                oldest = os.path.join(self._streams_dir, stream, seg.segment_name(segs[0]))
                if os.stat(oldest).st_mtime < time.time() - spec.ttl_s:
                    return True
            sealed_total = sum(self.sealed_size(stream, s) for s in segs[:-1])
        except FileNotFoundError:
            return True
        return sealed_total + tail.size + frame_len > spec.max_size_bytes

    def _reclaim(
        self, stream: str, segs: list[int], tail: Tail, sealed_total: int, frame_len: int, limit: int, floor: int,
        rotate: Rotate,
    ) -> tuple[Tail, int]:
        """Free the oldest segments wholly below ``floor``, every reader's committed position, until the append
        fits (RejectNewData, full; under the lock). Returns the tail and the sealed segments' total size.

        Lazily, only when full: until then read data stays for ``gatewayctl replay``. Nothing a reader has not
        committed goes, so nothing is lost and readers see no gap.
        """
        reclaimed = 0
        while len(segs) > 1 and segs[1] <= floor and sealed_total + tail.size + frame_len > limit:
            sealed_total -= self.sealed_size(stream, segs[0])
            reclaimed += self._unlink_oldest(stream, segs)
        if sealed_total + tail.size + frame_len > limit and len(segs) == 1 and tail.size and floor >= tail.next_seq:
            # The open segment is all there is (max_size_bytes within one segment) and every reader is past it:
            # seal it and free it, or such a stream could never take data again.
            tail = rotate(stream, tail)
            segs.append(tail.first_seq)
            reclaimed += self._unlink_oldest(stream, segs)
        if reclaimed:
            bump_counter(self._streams / stream, "reclaimed_messages", reclaimed)
            log.info("stream %r was full: freed %d messages every reader had committed (RejectNewData)",
                     stream, reclaimed)
        return tail, sealed_total

    def _drop_oldest(self, stream: str, segs: list[int], why: str) -> None:
        dropped = self._unlink_oldest(stream, segs)
        bump_counter(self._streams / stream, "dropped_messages", dropped)
        log.warning("stream %r: dropped %d oldest messages (%s)", stream, dropped, why)

    def _unlink_oldest(self, stream: str, segs: list[int]) -> int:
        """Delete the oldest segment (there is a newer one) and return how many messages it held."""
        first = segs.pop(0)
        (self._streams / stream / seg.segment_name(first)).unlink()
        for bad in (self._streams / stream).glob(seg.segment_name(first) + ".damaged-*"):
            bad.unlink(missing_ok=True)  # the copies go with their segment, as the data would have
        self._sealed_sizes.pop((stream, first), None)
        return segs[0] - first

    def sealed(self, stream: str, first: int, size: int) -> None:
        """Remember the size of a segment this process just sealed (it no longer changes)."""
        self._sealed_sizes[(stream, first)] = size

    def sealed_size(self, stream: str, first: int) -> int:
        """The size of the sealed segment starting at ``first``, cached (sealed segments do not change)."""
        key = (stream, first)
        size = self._sealed_sizes.get(key)
        if size is None:
            size = (self._streams / stream / seg.segment_name(first)).stat().st_size
            self._sealed_sizes[key] = size
        return size

    def forget(self, stream: str) -> None:
        """Drop what is cached about a deleted stream."""
        for key in [k for k in self._sealed_sizes if k[0] == stream]:
            del self._sealed_sizes[key]


def read_counters(folder: Path) -> dict[str, int]:
    """A stream's dropped, rejected and reclaimed counts (``counters.json``; {} when there is none yet)."""
    try:
        data = json.loads((folder / "counters.json").read_bytes())
        return {k: int(v) for k, v in data.items()}
    except (FileNotFoundError, ValueError):
        return {}


def bump_counter(folder: Path, key: str, n: int) -> None:
    """Add ``n`` to one of a stream's counts (called under the stream's lock)."""
    counters = read_counters(folder)
    counters[key] = counters.get(key, 0) + n
    atomic_write(folder / "counters.json", json.dumps(counters).encode(), sync=False)
