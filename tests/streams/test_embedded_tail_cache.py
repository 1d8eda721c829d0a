"""The embedded store's append knows its tail without listing the stream folder, and never trusts that knowledge
past a change by another writer: an append by anyone grows the tail file, a rotation creates the segment named after
the next sequence number, a deletion unlinks the tail (issue 18: two folder listings were ~10 % of an append)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.base import StrategyOnFull
from gateway.streams.embedded import EmbeddedStore


def test_appending_after_our_own_append_does_not_list_the_folder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="s", segment_size_bytes=4096, flush_on_write=False))
    store.append("s", b"first")
    listed: list[str] = []
    real = seg.list_segments

    def listing(folder: str) -> list[int]:
        listed.append(folder)
        return real(folder)

    monkeypatch.setattr(seg, "list_segments", listing)
    for i in range(200):  # ~30 rotations of our own
        assert store.append("s", b"x" * 100 + str(i).encode()) == i + 1
    assert listed == []
    assert [m.seq for m in store.read("s", 0, max_count=1000)] == list(range(201))
    store.close()


@pytest.mark.parametrize("strategy", [StrategyOnFull.OVERWRITE_OLDEST_DATA, None])
def test_two_writers_alternating_at_random_across_rotations_and_drops_lose_and_repeat_nothing(
        tmp_path: Path, strategy: StrategyOnFull | None) -> None:
    # None: no size limit; OverwriteOldestData with a small limit: each writer drops segments the other listed
    spec = StreamSpec(name="s", segment_size_bytes=2048, flush_on_write=False,
                      **({"max_size_bytes": 16 * 1024, "strategy_on_full": strategy} if strategy else {}))
    stores = [EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)]
    stores[0].create_stream(spec)
    rng = random.Random(7)
    acked: dict[int, bytes] = {}
    for i in range(1500):
        payload = f"m{i:05d}".encode() * rng.randint(1, 30)
        seq = stores[rng.randint(0, 1)].append("s", payload)
        assert seq not in acked, f"sequence number {seq} handed out twice"
        acked[seq] = payload
    assert sorted(acked) == list(range(1500))
    fresh = EmbeddedStore(tmp_path)
    kept = fresh.read("s", fresh.describe("s").oldest_seq, max_count=10_000)
    assert [m.seq for m in kept] == list(range(kept[0].seq, 1500))
    assert all(m.payload == acked[m.seq] for m in kept)
    if strategy is None:
        assert kept[0].seq == 0
    else:
        assert fresh.describe("s").dropped_messages == kept[0].seq  # every dropped message counted once
    for s in (*stores, fresh):
        s.close()


def test_a_stream_deleted_and_created_again_by_another_writer_is_not_written_through_the_old_tail(
        tmp_path: Path) -> None:
    spec = StreamSpec(name="s", flush_on_write=False)
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(spec)
    assert a.append("s", b"old") == 0
    b.delete_stream("s")
    b.create_stream(spec)
    assert a.append("s", b"new") == 0  # into the new stream's segment, not the unlinked one
    assert [m.payload for m in b.read("s", 0, max_count=10)] == [b"new"]
    a.close()
    b.close()
