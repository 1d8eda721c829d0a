"""The collector writes a fast source in bounded batches: a full pending list wakes the flusher before its interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from gateway.collector import FLUSH_AT_RECORDS, Collector
from gateway.record import Quality
from gateway.sources.common import ConnectionBase, Emitter
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
