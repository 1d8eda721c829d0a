"""An OPC DA collector run in this process against an OpenOPC gateway (usually the simulator's): a connection to
it, and the collector running with deadlines on its counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.collector import Collector
from gateway.record import Record
from gateway.sources.opcda import OpcDaSource
from gateway.sources.opcda_config import OpcDaConnection
from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams.embedded import EmbeddedStore

SERVER = "FactoryEdge.TEP.1"
FAST = {"scan_interval_s": 0.05, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "timeout_s": 1.0,
        "connect_timeout_s": 1.0}
PLAIN = {"allow_plaintext": True}  # the simulator's endpoint without --opcda-tls-dir has no TLS


def opcda_conn(port: int, **kw: Any) -> OpcDaConnection:
    """A connection named ``da`` to the simulator's OPC DA server on ``127.0.0.1:port``, fast and without TLS."""
    return OpcDaConnection(**{"name": "da", "host": "127.0.0.1", "port": port, "server": SERVER, **FAST, **PLAIN,
                              **kw})


class Run:
    """A collector running in this process's event loop; ``until`` waits on its counters with a deadline."""

    def __init__(self, tmp: Path, conns: list[OpcDaConnection]) -> None:
        self.tmp = tmp
        self.collector = Collector("test", EmbeddedStore(tmp / "store"), StreamSpec(name="opcda"), OpcDaSource)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.collector.run(conns, self.stop))

    def counters(self, name: str = "da") -> Any:
        conn = self.collector.connections.get(name)
        return conn.counters if conn else None

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            assert loop.time() < deadline, f"timed out waiting for {what}: {self.collector.status()}"
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.02)

    async def written(self, n: int, name: str = "da") -> None:
        await self.until(lambda: (c := self.counters(name)) is not None and c.values_written >= n, f"{n} written")

    async def more(self, n: int, name: str = "da") -> None:
        """Wait until connection ``name`` is connected and wrote ``n`` more values than now."""
        start = self.counters(name).values_written
        await self.until(lambda: self.counters(name).connected and self.counters(name).values_written >= start + n,
                         f"{n} more values from {name}")

    async def finish(self) -> list[Record]:
        self.stop.set()
        await self.task
        reader = RecordReader(EmbeddedStore(self.tmp / "store"), "opcda", "t", PositionStore(self.tmp / "pos"))
        return reader.poll(max_messages=100_000, timeout_s=0).records
