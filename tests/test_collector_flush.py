"""The collector writes a fast source in bounded batches: a full pending list wakes the flusher before its interval."""

from __future__ import annotations

import asyncio
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
