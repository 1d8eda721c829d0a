"""A full RejectNewData stream accepts data again once its readers caught up (issue 13 item A).

Embedded store: a full RejectNewData stream reclaims the segments every reader (every position file of the stream)
has committed past, and nothing below the slowest reader's position. Stream manager deletes nothing that was read,
only what its time to live expired, so the adapter refuses a RejectNewData stream it could not free.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError, StreamFull
from gateway.streams import PositionStore, StrategyOnFull, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.stream_manager import stream_manager_factory

KB = 1024


def reject_spec(**kw: object) -> StreamSpec:
    fields: dict[str, object] = {"name": "s", "max_size_bytes": 8 * KB, "segment_size_bytes": 2 * KB,
                                 "strategy_on_full": StrategyOnFull.REJECT_NEW_DATA, "flush_on_write": False}
    fields.update(kw)
    return StreamSpec(**fields)  # type: ignore[arg-type]


def fill(store: EmbeddedStore, stream: str = "s") -> list[int]:
    """Append 200-byte messages until the stream refuses one; the sequence numbers accepted."""
    accepted: list[int] = []
    with pytest.raises(StreamFull):
        for i in range(10_000):
            accepted.append(store.append(stream, bytes([i % 256]) * 200))
    assert len(accepted) > 10
    return accepted


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    made = EmbeddedStore(tmp_path)
    yield made
    made.close()


def test_full_stream_accepts_again_once_every_reader_committed_everything(store: EmbeddedStore,
                                                                         tmp_path: Path) -> None:
    positions = PositionStore(tmp_path / "positions", sync=False)
    store.create_stream(reject_spec())
    accepted = fill(store)
    for reader in ("publisher-file", "anomaly"):
        positions.commit(reader, "s", accepted[-1] + 1)
    seq = store.append("s", b"after the readers caught up".ljust(200))
    assert seq == accepted[-1] + 1  # no number skipped or reused
    info = store.describe("s")
    assert info.dropped_messages == 0  # read and committed by every reader is not data lost
    assert info.oldest_seq <= seq and info.total_bytes <= 8 * KB
    assert [m.payload for m in store.read("s", seq)] == [b"after the readers caught up".ljust(200)]
    fill(store)  # and it fills to its size again, then refuses again (the reader has not read the new data)


def test_a_reader_behind_keeps_everything_from_its_position(store: EmbeddedStore, tmp_path: Path) -> None:
    positions = PositionStore(tmp_path / "positions", sync=False)
    store.create_stream(reject_spec())
    accepted = fill(store)
    positions.commit("fast", "s", accepted[-1] + 1)
    positions.commit("slow", "s", 0)
    with pytest.raises(StreamFull):  # the slow reader has read nothing: nothing may go
        store.append("s", b"x" * 200)
    assert store.describe("s").oldest_seq == 0

    behind = accepted[len(accepted) // 2]
    positions.commit("slow", "s", behind)
    more = fill(store)
    info = store.describe("s")
    assert 0 < info.oldest_seq <= behind and info.dropped_messages == 0
    kept = [m.seq for m in store.read("s", behind, max_count=10_000)]
    assert kept == list(range(behind, more[-1] + 1))  # everything the slow reader has yet to read is there


def test_without_any_reader_position_a_full_stream_keeps_its_data(store: EmbeddedStore) -> None:
    # A reader that never committed is unknown (a publisher deployed after the collector): RejectNewData keeps
    # the oldest data for it, so a stream nobody has committed on frees nothing.
    store.create_stream(reject_spec())
    fill(store)
    with pytest.raises(StreamFull):
        store.append("s", b"x" * 200)
    assert store.describe("s").oldest_seq == 0


def test_a_stream_of_one_segment_is_reclaimed_too(store: EmbeddedStore, tmp_path: Path) -> None:
    # max_size_bytes below segment_size_bytes: the newest (open) segment is all there is; once every reader is past
    # it, it is sealed and reclaimed.
    store.create_stream(reject_spec(max_size_bytes=4 * KB, segment_size_bytes=8 * KB))
    accepted = fill(store)
    PositionStore(tmp_path / "positions", sync=False).commit("only", "s", accepted[-1] + 1)
    assert store.append("s", b"room again".ljust(200)) == accepted[-1] + 1


def test_stream_manager_refuses_reject_new_data_that_could_jam(tmp_path: Path) -> None:
    sm_store, cleanup = stream_manager_factory(tmp_path)
    try:
        with pytest.raises(ConfigError, match="ttl_s") as refused:
            sm_store.create_stream(reject_spec())
        assert "OverwriteOldestData" in (refused.value.fix or "")
        with pytest.raises(ConfigError, match="segment_size_bytes"):
            sm_store.create_stream(reject_spec(ttl_s=3600, max_size_bytes=4 * KB, segment_size_bytes=4 * KB))
        sm_store.create_stream(reject_spec(ttl_s=3600))  # time to live frees it: accepted
        assert sm_store.describe("s").spec.strategy_on_full is StrategyOnFull.REJECT_NEW_DATA
    finally:
        cleanup()


def test_stream_manager_stand_in_does_not_free_read_data(tmp_path: Path) -> None:
    # The real server deletes nothing because it was read (it knows no readers); the stand-in must not either,
    # even when reader positions sit in its store folder.
    sm_store, cleanup = stream_manager_factory(tmp_path)
    try:
        sm_store.create_stream(reject_spec(ttl_s=3600))
        accepted: list[int] = []
        with pytest.raises(StreamFull):
            for i in range(10_000):
                accepted.append(sm_store.append("s", bytes([i % 256]) * 200))
        PositionStore(tmp_path / "sm-server" / "positions", sync=False).commit("r", "s", accepted[-1] + 1)
        with pytest.raises(StreamFull):
            sm_store.append("s", b"x" * 200)
    finally:
        cleanup()
