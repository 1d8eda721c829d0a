"""The stream contract, run over every implementation (embedded store, stream manager through the real SDK)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from gateway.errors import StreamFull, StreamNotFound
from gateway.record import make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StrategyOnFull, StreamSpec
from gateway.streams.base import StreamStore

KB = 1024


def spec(name: str = "s", **kw: object) -> StreamSpec:
    return StreamSpec(name=name, **kw)  # type: ignore[arg-type]


def test_sequence_numbers_start_at_zero_without_gaps(store: StreamStore) -> None:
    store.create_stream(spec())
    seqs = [store.append("s", f"m{i}".encode()) for i in range(50)]
    assert seqs == list(range(50))
    info = store.describe("s")
    assert (info.oldest_seq, info.next_seq, info.message_count) == (0, 50, 50)


def test_reads_do_not_consume(store: StreamStore) -> None:
    store.create_stream(spec())
    for i in range(10):
        store.append("s", f"m{i}".encode())
    first = store.read("s", 0, max_count=100)
    again = store.read("s", 0, max_count=100)
    assert [m.payload for m in first] == [f"m{i}".encode() for i in range(10)]
    assert [m.seq for m in again] == [m.seq for m in first]
    middle = store.read("s", 4, max_count=3)
    assert [m.seq for m in middle] == [4, 5, 6]


def test_read_times_out_with_nothing_and_wakes_on_append(store: StreamStore) -> None:
    store.create_stream(spec())
    t0 = time.monotonic()
    assert store.read("s", 0, timeout_s=0.2) == []
    assert time.monotonic() - t0 >= 0.19

    got: list[bytes] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        got.extend(m.payload for m in store.read("s", 0, min_count=1, timeout_s=10))

    th = threading.Thread(target=reader)
    th.start()
    started.wait(5)
    t1 = time.monotonic()
    store.append("s", b"late")
    th.join(10)
    assert got == [b"late"]
    assert time.monotonic() - t1 < 5


def test_unknown_stream_is_a_clear_error(store: StreamStore) -> None:
    with pytest.raises(StreamNotFound, match="nope"):
        store.append("nope", b"x")
    with pytest.raises(StreamNotFound):
        store.describe("nope")


def test_create_is_idempotent_and_list_and_delete(store: StreamStore) -> None:
    store.create_stream(spec("a"))
    store.append("a", b"1")
    store.create_stream(spec("a"))
    assert store.describe("a").next_seq == 1
    store.create_stream(spec("b"))
    assert {"a", "b"} <= set(store.list_streams())
    store.delete_stream("b")
    assert "b" not in store.list_streams()


def test_reject_new_data_refuses_and_counts_keeping_old(store: StreamStore) -> None:
    # ttl_s: stream manager refuses RejectNewData it could never free (test_full_reclaim.py); an hour never passes here
    store.create_stream(spec(max_size_bytes=8 * KB, segment_size_bytes=2 * KB, ttl_s=3600,
                             strategy_on_full=StrategyOnFull.REJECT_NEW_DATA))
    accepted = []
    with pytest.raises(StreamFull, match="RejectNewData"):
        for i in range(1000):
            accepted.append(store.append("s", bytes([i % 256]) * 200))
    assert 10 < len(accepted) < 1000
    info = store.describe("s")
    assert info.rejected_appends >= 1
    assert [m.seq for m in store.read("s", 0, max_count=10_000)] == accepted


def test_overwrite_oldest_drops_counts_and_reader_sees_gap(store: StreamStore, tmp_path: Path) -> None:
    store.create_stream(spec(max_size_bytes=8 * KB, segment_size_bytes=2 * KB))
    writer = RecordWriter(store, "s")
    for i in range(200):
        writer.write([make_record("src", "t", float(i), seq=i)])
    info = store.describe("s")
    assert info.next_seq == 200
    assert info.oldest_seq > 0
    assert info.dropped_messages == info.oldest_seq
    assert info.total_bytes <= 8 * KB
    reader = RecordReader(store, "s", "r", PositionStore(tmp_path / "pos"))
    batch = reader.poll(max_messages=1000, timeout_s=0)
    assert batch.lost == info.oldest_seq
    assert [r.value for r in batch.records] == [float(i) for i in range(info.oldest_seq, 200)]


def test_reader_positions_are_durable_and_independent(store: StreamStore, tmp_path: Path) -> None:
    store.create_stream(spec())
    writer = RecordWriter(store, "s")
    for i in range(10):
        writer.write([make_record("src", "t", i, seq=i)])
    positions = PositionStore(tmp_path / "pos")
    a = RecordReader(store, "s", "dest-a", positions)
    b = RecordReader(store, "s", "dest-b", positions)
    got = a.poll(max_messages=4, timeout_s=0)
    assert [r.value for r in got.records] == [0, 1, 2, 3]
    a.commit(got.next_seq)
    a.poll(max_messages=2, timeout_s=0)  # read but never committed: must come again after a restart
    assert [r.value for r in b.poll(max_messages=100, timeout_s=0).records] == list(range(10))

    a2 = RecordReader(store, "s", "dest-a", PositionStore(tmp_path / "pos"))
    assert [r.value for r in a2.poll(max_messages=100, timeout_s=0).records] == list(range(4, 10))
    a2.rewind()
    assert a2.poll(max_messages=1, timeout_s=0).records[0].value == 4


def test_corrupt_message_is_skipped_and_counted(store: StreamStore, tmp_path: Path) -> None:
    store.create_stream(spec())
    writer = RecordWriter(store, "s")
    writer.write([make_record("src", "t", 1.0, seq=1)])
    store.append("s", b"FE\x01\xff\xfe garbage")  # right magic, broken body
    store.append("s", b"not a batch")
    store.append("s", b"FE\x09future version")
    writer.write([make_record("src", "t", 2.0, seq=2)])
    reader = RecordReader(store, "s", "r", PositionStore(tmp_path / "pos"))
    batch = reader.poll(max_messages=100, timeout_s=0)
    assert [r.value for r in batch.records] == [1.0, 2.0]
    assert batch.corrupt == 3 and reader.corrupt_messages_read == 3
    assert batch.next_seq == 5


def test_record_batches_roundtrip_every_field(store: StreamStore, tmp_path: Path) -> None:
    from gateway.record import Kind, Quality

    store.create_stream(spec())
    records = [
        make_record("plc-1", "/site/line/temp", 21.5, seq=1, source_ts_ns=1_700_000_000_123_456_789),
        make_record("plc-1", "/site/line/count", 42, seq=2),
        make_record("plc-1", "/site/line/run", True, seq=3),
        make_record("plc-1", "/site/line/recipe", "A-17", seq=4),
        make_record("plc-1", "/site/line/bad", float("nan"), seq=5),
        make_record("anomaly", "reactor/score", 0.7, seq=6, kind=Kind.SCORE, quality=Quality.UNCERTAIN),
    ]
    RecordWriter(store, "s").write(records)
    got = RecordReader(store, "s", "r", PositionStore(tmp_path / "pos")).poll(timeout_s=0).records
    assert got == records
    assert got[4].quality == Quality.BAD and got[4].value is None
    assert [r.id for r in got] == [r.id for r in records]


@pytest.mark.parametrize("seed", range(4))
def test_a_byte_bounded_read_returns_what_fits_and_the_next_read_goes_on_from_there(
    store: StreamStore, seed: int
) -> None:
    # small segments, so that the embedded store's reads cross segment boundaries
    store.create_stream(spec(segment_size_bytes=64 * KB))
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.choice([1, 10, 3 * KB, 20 * KB, 70 * KB])) for _ in range(120)]  # SDK: >= 1 byte
    for p in payloads:
        store.append("s", p)
    got: list[bytes] = []
    start = 0
    while start < len(payloads):
        budget = rng.choice([1, 5 * KB, 30 * KB, 100 * KB])
        batch = store.read("s", start, max_count=rng.choice([1, 7, 100]), max_bytes=budget)
        sizes = [len(m.payload) for m in batch]
        assert batch and [m.seq for m in batch] == list(range(start, start + len(batch)))
        # the first always; then only what fits; and no more would have fitted unless max_count stopped it
        assert len(batch) == 1 or sum(sizes) <= budget
        got += [m.payload for m in batch]
        start += len(batch)
    assert got == payloads  # every message once, in order


def test_a_poll_with_max_bytes_reads_a_large_message_alone(store: StreamStore, tmp_path: Path) -> None:
    store.create_stream(spec())
    for p in (b"a" * 10, b"b" * 50 * KB, b"c" * 10):
        store.append("s", p)
    reader = RecordReader(store, "s", "r", PositionStore(tmp_path / "pos"))
    assert [m.seq for m in store.read("s", 0, max_bytes=1 * KB)] == [0]
    assert [m.seq for m in store.read("s", 1, max_bytes=1 * KB)] == [1]  # larger than the bound: alone
    assert [m.seq for m in store.read("s", 1, max_bytes=60 * KB)] == [1, 2]
    batch = reader.poll(max_messages=100, timeout_s=0, max_bytes=1 * KB)
    assert (batch.first_seq, batch.next_seq) == (0, 1)
