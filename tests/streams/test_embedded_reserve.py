"""The newest segment of a durable stream has its disk blocks reserved ahead (fallocate, keeping the file's size),
so that each fdatasync commits less (issue 18); a sealed segment gives back what it did not use and keeps its time of
last write, which time to live reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore

BLOCK = 4096
SEGMENT = 256 * 1024


def _reserving(folder: Path) -> bool:
    """Does this file system reserve blocks for ``seg.reserve`` (Linux fallocate)?"""
    probe = folder / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        seg.reserve(fd, 0, 1024 * 1024)
        return os.fstat(fd).st_blocks * 512 >= 1024 * 1024
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    if not _reserving(tmp_path):
        pytest.skip("the file system of the test folder reserves no blocks (fallocate)")
    return EmbeddedStore(tmp_path)


def _segment(store: EmbeddedStore, first: int) -> Path:
    return store.root / "streams" / "s" / seg.segment_name(first)


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_newest_segment_is_reserved_whole_and_readers_see_only_what_was_written(store: EmbeddedStore) -> None:
    store.create_stream(StreamSpec(name="s", segment_size_bytes=SEGMENT, flush_on_write=True))
    payloads = [bytes([i]) * 1000 for i in range(20)]
    assert [store.append("s", p) for p in payloads] == list(range(20))
    tail = _segment(store, 0)
    assert os.path.getsize(tail) == 20 * (seg.HEADER_SIZE + 1000)
    assert _allocated(tail) >= SEGMENT
    assert [m.payload for m in EmbeddedStore(store.root).read("s", 0, max_count=100)] == payloads


def test_a_stream_without_flush_on_write_reserves_nothing(store: EmbeddedStore) -> None:
    store.create_stream(StreamSpec(name="s", segment_size_bytes=SEGMENT, flush_on_write=False))
    for i in range(20):
        assert store.append("s", b"x" * 1000) == i
    assert _allocated(_segment(store, 0)) < 20 * (seg.HEADER_SIZE + 1000) + 16 * BLOCK


def test_a_sealed_segment_gives_back_its_reserved_blocks_and_keeps_its_time_of_last_write(
        store: EmbeddedStore) -> None:
    store.create_stream(StreamSpec(name="s", segment_size_bytes=SEGMENT, flush_on_write=True))
    frame = seg.HEADER_SIZE + 100_000  # large: the next one leaves a sizeable reserved part unused
    per_segment = SEGMENT // frame
    for _ in range(per_segment):
        store.append("s", b"v" * 100_000)
    first = _segment(store, 0)
    assert _allocated(first) >= SEGMENT
    long_ago = 1_000_000_000_000_000_000  # 2001: the rotation must not make it look younger
    os.utime(first, ns=(long_ago, long_ago))
    assert store.append("s", b"v" * 100_000) == per_segment  # seals the first segment
    assert seg.list_segments(str(first.parent)) == [0, per_segment]
    assert os.stat(first).st_mtime_ns == long_ago
    assert os.path.getsize(first) == per_segment * frame
    assert _allocated(first) <= -(-per_segment * frame // BLOCK) * BLOCK + BLOCK
    assert _allocated(_segment(store, per_segment)) >= SEGMENT - frame


def test_a_reservation_left_by_a_writer_that_stopped_is_given_back_by_the_one_that_seals(
        tmp_path: Path, store: EmbeddedStore) -> None:
    store.create_stream(StreamSpec(name="s", segment_size_bytes=SEGMENT, flush_on_write=True))
    store.append("s", b"a" * 100_000)
    store.close()  # gone without sealing, as a killed writer
    other = EmbeddedStore(tmp_path)
    seq = 1
    while seg.list_segments(str(_segment(other, 0).parent)) == [0]:
        assert other.append("s", b"b" * 100_000) == seq
        seq += 1
    size = os.path.getsize(_segment(other, 0))
    assert _allocated(_segment(other, 0)) <= -(-size // BLOCK) * BLOCK + BLOCK
    assert [m.seq for m in other.read("s", 0, max_count=1000)] == list(range(seq))
    other.close()
