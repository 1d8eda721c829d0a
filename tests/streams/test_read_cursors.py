"""Several readers of one stream in one process (a publisher's destinations) each go on from where they stopped
without walking the segment from its start again (``segments.locate``).

A store kept one remembered read position per stream, so two readers at different positions took it from each
other at every poll and each poll walked the segment's headers up to its position: with 1-record messages, a poll of
100 messages took 12.5 ms instead of 1 ms halfway through one segment, and more the further in (a destination
draining its backlog while another is caught up).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore
from gateway.streams.places import Place

SPEC = StreamSpec(name="s", flush_on_write=False)
MESSAGES = 600


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    s = EmbeddedStore(tmp_path / "store")
    s.create_stream(SPEC)
    for i in range(MESSAGES):
        s.append("s", f"message {i}".encode())
    return s


def _count_locates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = seg.locate

    def counted(fd: int, first_seq: int, target_seq: int, size: int, sealed_next: int | None
                ) -> tuple[int, int] | None:
        calls.append(target_seq)
        return real(fd, first_seq, target_seq, size, sealed_next)

    monkeypatch.setattr(seg, "locate", counted)
    return calls


@pytest.mark.parametrize("readers", [2, 3, 16])
def test_readers_at_different_positions_each_locate_once(store: EmbeddedStore, tmp_path: Path, readers: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    positions = PositionStore(tmp_path / "positions")
    group = [RecordReader(store, "s", f"r{i}", positions) for i in range(readers)]
    for i, r in enumerate(group):
        r.position = i * 7  # all different, none at a message boundary of another's polls
    calls = _count_locates(monkeypatch)
    read: list[list[bytes]] = [[] for _ in group]
    for _ in range(MESSAGES // 10):
        for i, r in enumerate(group):
            msgs = store.read("s", r.position, max_count=10)
            read[i] += [m.payload for m in msgs]
            r.position = msgs[-1].seq + 1 if msgs else r.position
    assert len(calls) <= readers, f"segment walked {len(calls)} times for {readers} readers"
    for i, got in enumerate(read):
        assert got == [f"message {n}".encode() for n in range(i * 7, MESSAGES)]
    store.close()


def test_a_reader_that_goes_back_finds_its_messages(store: EmbeddedStore) -> None:
    """Remembered positions are only a shortcut: a read from anywhere (a rewind, a replay) still returns exactly the
    messages from there, whatever other reads left behind."""
    for start in (500, 10, 300, 0, 599, 250, 251, 10):
        msgs = store.read("s", start, max_count=5)
        assert [m.seq for m in msgs] == list(range(start, min(start + 5, MESSAGES)))
        assert [m.payload for m in msgs] == [f"message {n}".encode() for n in range(start, min(start + 5, MESSAGES))]
    store.close()


@pytest.mark.parametrize("new", ["a longer new message {}", "{}"])
def test_a_stream_made_again_by_another_process_is_read_from_its_own_frames(tmp_path: Path, new: str) -> None:
    """A remembered place is of one segment file: when another process deleted the stream and made it again, the
    new file's messages lie elsewhere. Read from the old place, longer ones were called damaged (an ERROR to check
    the disk, bytes set aside) and shorter ones were skipped as lost."""
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(SPEC)
    for i in range(200):
        a.append("s", f"old message {i}".encode())
    assert [m.seq for m in a.read("s", 0, max_count=100)] == list(range(100))  # a remembers seq 100's place
    b.delete_stream("s")
    b.create_stream(SPEC)
    for i in range(200):
        b.append("s", new.format(i).encode())
    got = a.read("s", 100, max_count=10)
    assert [m.payload for m in got] == [new.format(n).encode() for n in range(100, 110)]
    assert a.corrupt_frames == 0
    assert a.describe("s").lost_messages == 0
    a.close()
    b.close()


def test_a_place_whose_frame_does_not_carry_its_message_is_not_used(tmp_path: Path) -> None:
    """The file system may give the made-again segment the deleted one's inode number: a place is used only when
    the frame at its offset is the message it names."""
    store = EmbeddedStore(tmp_path)
    store.create_stream(SPEC)
    for i in range(200):
        store.append("s", f"message {i}".encode())
    segment = tmp_path / "streams" / "s" / seg.segment_name(0)
    store._places.remember("s", Place(seq=100, segment=0, offset=1000, asked=100, inode=segment.stat().st_ino))
    got = store.read("s", 100, max_count=5)
    assert [m.payload for m in got] == [f"message {n}".encode() for n in range(100, 105)]
    assert store.corrupt_frames == 0
    store.close()
