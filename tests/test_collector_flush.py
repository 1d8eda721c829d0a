"""How the collector writes: a fast source in bounded batches (a full pending list wakes the flusher before its
interval), and with ``flush_interval_s`` 0 by group commit (an idle stream takes a value at once, the values read
during an append go together into the next); markers move at most every ``MARKER_INTERVAL_S`` and at stop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.codec import decode_batch
from gateway.collector import FLUSH_AT_RECORDS, Collector
from gateway.collector_state import MARKER_INTERVAL_S, ConnectionState
from gateway.record import Quality, make_record
from gateway.sources.common import ConnectionBase, Counters, Emitter
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore

TOTAL = FLUSH_AT_RECORDS * 3


class _Burst:
    """A source that reads TOTAL distinct values at once, then stays connected and quiet."""

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        for i in range(TOTAL):
            emitter.emit(f"tag{i}", float(i), Quality.GOOD)
        await asyncio.Event().wait()


def test_a_burst_is_written_long_before_the_flush_interval(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="burst"), _Burst)
    conn = ConnectionBase(name="fast", flush_interval_s=3600)  # the timer alone would wait an hour

    async def scenario() -> tuple[int, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([conn], stop))
        deadline = asyncio.get_running_loop().time() + 30
        while collector.connections.get("fast") is None or \
                collector.connections["fast"].counters.values_written < TOTAL:
            assert asyncio.get_running_loop().time() < deadline, "the burst was not flushed early"
            await asyncio.sleep(0.01)  # polling a counter with a deadline, not synchronising on time
        messages = store.describe("burst").message_count
        stop.set()
        await task
        return collector.connections["fast"].counters.values_written, messages

    written, messages = asyncio.run(scenario())
    assert written == TOTAL
    assert messages >= 2  # and the writer splits a large batch into several stream messages
    store.close()


class _SlowStore(EmbeddedStore):
    """A stream that takes each append only after a long pause: the reader outruns it."""

    def append(self, stream: str, payload: bytes) -> int:
        time.sleep(0.05)  # the slow disk being simulated, in the writer thread; no test waits on it
        return super().append(stream, payload)


class _Poller:
    """A polling source at full speed (scan interval 0): 100 values a scan, waiting for room like the real ones."""

    most_pending = 0

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        scan = 0
        while True:
            await emitter.room()
            for i in range(100):
                emitter.emit(f"tag{i}", float(scan * 100 + i), Quality.GOOD)
            _Poller.most_pending = max(_Poller.most_pending, len(emitter.pending))
            scan += 1
            await asyncio.sleep(0)


def test_a_poller_faster_than_the_stream_waits_instead_of_piling_values_up(tmp_path: Path) -> None:
    store = _SlowStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="slow"), _Poller)
    conn = ConnectionBase(name="fast", flush_interval_s=0.05)

    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([conn], stop))
        deadline = asyncio.get_running_loop().time() + 30
        while collector.connections.get("fast") is None or \
                collector.connections["fast"].counters.values_written < 10 * FLUSH_AT_RECORDS:
            assert _Poller.most_pending < 2 * FLUSH_AT_RECORDS + 100, f"{_Poller.most_pending} values piled up"
            assert asyncio.get_running_loop().time() < deadline, "the slow stream took too little"
            await asyncio.sleep(0.01)  # polling a counter with a deadline, not synchronising on time
        stop.set()
        await task
        return collector.connections["fast"].counters.values_read

    read = asyncio.run(scenario())
    assert read >= 10 * FLUSH_AT_RECORDS
    # without Emitter.room() the poller reads ~100,000 values per slow append and all of them wait in memory
    assert _Poller.most_pending < 2 * FLUSH_AT_RECORDS + 100
    store.close()


def test_the_emitter_says_when_its_empty_pending_list_gets_a_record() -> None:
    emitter = Emitter(ConnectionBase(name="c"), Counters())
    calls: list[int] = []
    emitter.on_pending = lambda: calls.append(len(emitter.pending))
    emitter.emit("a", 1.0, Quality.GOOD)
    emitter.emit("b", 2.0, Quality.GOOD)  # the list was not empty: nothing new to say
    assert calls == [0]
    emitter.take()
    emitter.emit_meta("a", {"units": "bar"})
    emitter.emit_gap(1, 2)
    assert calls == [0, 0]


class _GatedStore(EmbeddedStore):
    """A stream whose appends each wait for the test's go-ahead, noting how many records each one carried."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.appended: list[int] = []

    def append(self, stream: str, payload: bytes) -> int:
        self.entered.release()
        assert self.go.acquire(timeout=30), "the test never let the append through"
        self.appended.append(len(decode_batch(payload)))
        return super().append(stream, payload)


class _Steered:
    """A source that emits what the test hands it through its queue."""

    queue: asyncio.Queue[list[str]]

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        while True:
            for tag in await _Steered.queue.get():
                emitter.emit(tag, 1.0, Quality.GOOD)


def test_group_commit_writes_an_idle_value_alone_and_gathers_values_read_during_an_append(tmp_path: Path) -> None:
    # flush_interval_s 0: no timer; the first value goes at once, the three read while it is appended go together
    store = _GatedStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="gc"), _Steered)
    conn = ConnectionBase(name="plc", flush_interval_s=0)
    assert ConnectionBase(name="default").flush_interval_s == 0

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        _Steered.queue = asyncio.Queue()
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([conn], stop))
        await _Steered.queue.put(["a"])
        assert await loop.run_in_executor(None, store.entered.acquire, True, 30), "the idle value was not written"
        await _Steered.queue.put(["b", "c", "d"])
        while _Steered.queue.qsize():  # the source took them (polling a queue with the loop's help, not a timer)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        store.go.release()  # the first append completes; the next one carries b, c and d
        assert await loop.run_in_executor(None, store.entered.acquire, True, 30), "b, c and d were not written"
        store.go.release()
        while collector.connections["plc"].counters.values_written < 4:
            await asyncio.sleep(0.01)  # polling a counter; the appends above already happened
        stop.set()
        for _ in range(4):
            store.go.release()  # the metrics and anything else written at stop
        await task

    asyncio.run(scenario())
    assert store.appended[:2] == [1, 3]
    store.close()


def test_markers_move_at_most_every_interval_and_exactly_at_stop(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # group commit appends as often as the stream takes it; the marker's atomic replace costs more than an append,
    # so it moves at most every MARKER_INTERVAL_S (a kill then starts the gap at most that early) and at stop
    store = EmbeddedStore(tmp_path / "store")
    state = ConnectionState(tmp_path / "state", store, "s")
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def append(seq: int) -> None:
        records = [make_record("plc", "a", float(seq), seq=seq, source_ts_ns=seq)]
        state.before_append("plc", seq)
        state.after_append("plc", records)

    def on_disk() -> int:
        return int(json.loads((tmp_path / "state" / "plc.json").read_text())["seq"])

    append(1)
    assert on_disk() == 1
    clock[0] += MARKER_INTERVAL_S / 2
    append(2)
    assert on_disk() == 1  # held back
    used, _ = state.read_marker("plc") or (0, None)
    assert used > 2  # a kill now: the restart still continues past 2 (the reservation)
    clock[0] += MARKER_INTERVAL_S
    append(3)
    assert on_disk() == 3
    clock[0] += MARKER_INTERVAL_S / 2
    append(4)
    state.sync()  # the stop
    assert on_disk() == 4
    store.close()


class _CountingStore(EmbeddedStore):
    """Notes how many records each append carried, and from which connections."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.appended: list[list[str]] = []

    def append(self, stream: str, payload: bytes) -> int:
        self.appended.append([r.source for r in decode_batch(payload)])
        return super().append(stream, payload)


class _TenAtOnce:
    """Reads 10 values as soon as it connects, then stays connected and quiet."""

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        for i in range(10):
            emitter.emit(f"tag{i}", float(i), Quality.GOOD)
        await asyncio.Event().wait()


def _run_until_written(collector: Collector, conns: list[ConnectionBase], total: int) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(conns, stop))
        deadline = asyncio.get_running_loop().time() + 30
        while sum(c.counters.values_written for c in collector.connections.values()) < total:
            assert asyncio.get_running_loop().time() < deadline, "the values were not written"
            await asyncio.sleep(0.01)  # polling a counter with a deadline, not synchronising on time
        stop.set()
        await task

    asyncio.run(scenario())


def test_one_flush_writes_every_connection_in_one_append(tmp_path: Path) -> None:
    # each append is fsynced: one per connection per flush made 200 PLCs cost 200 fsyncs a flush, and their values
    # waited in memory meanwhile (issue 18: 250 MB with 200 connections)
    store = _CountingStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="many"), _TenAtOnce)
    conns = [ConnectionBase(name=f"plc{i}") for i in range(5)]
    _run_until_written(collector, conns, 50)
    assert len(store.appended) == 1, [len(a) for a in store.appended]
    assert sorted(set(store.appended[0])) == [f"plc{i}" for i in range(5)]
    assert [c.counters.values_written for c in collector.connections.values()] == [10] * 5
    records = decode_batch(store.read("many", 0, max_count=10)[0].payload)
    for name in {r.source for r in records}:  # each connection's values in its own order and sequence
        seqs = [r.seq for r in records if r.source == name]
        assert seqs == sorted(seqs) and len(seqs) == 10
    store.close()


def test_the_pending_budget_is_shared_by_the_connections(tmp_path: Path) -> None:
    # a bound per connection of 2 x FLUSH_AT_RECORDS let 200 connections hold 1.6 million values while the stream
    # was busy; the early-flush count (and with it Emitter.room's bound) is the collector's budget split over them
    collector = Collector("test", _CountingStore(tmp_path / "store"), StreamSpec(name="many"), _TenAtOnce)
    conns = [ConnectionBase(name=f"plc{i}") for i in range(200)]
    _run_until_written(collector, conns, 2000)
    counts = {c.emitter.on_full[0] for c in collector.connections.values() if c.emitter.on_full}
    assert len(counts) == 1 and max(counts) * len(conns) <= 2 * FLUSH_AT_RECORDS, counts
    collector.store.close()
