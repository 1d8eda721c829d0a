"""A Modbus collector run in this process against a peer: a connection to it, the collector running, what it wrote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.collector import Collector
from gateway.record import Record
from gateway.sources.modbus import ModbusSource
from gateway.sources.modbus_config import ModbusConnection
from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams.embedded import EmbeddedStore


def conn(port: int, units: list[dict[str, Any]], **kw: Any) -> ModbusConnection:
    """A connection named ``plc`` to ``127.0.0.1:port`` with fast scans and reconnects; ``kw`` overrides."""
    settings = {"name": "plc", "host": "127.0.0.1", "port": port, "scan_interval_s": 0.05, "timeout_s": 0.5,
                "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "flush_interval_s": 0.05, **kw}
    return ModbusConnection(units=units, **settings)


async def until(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``cond`` on the event loop until true; fail after ``timeout`` naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def collecting(tmp: Path, conns: list[ModbusConnection]) -> AsyncIterator[Collector]:
    """A collector writing to ``tmp / "store"``, running until the block ends, once every connection started."""
    collector = Collector("test", EmbeddedStore(tmp / "store"), StreamSpec(name="modbus"), ModbusSource)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(conns, stop))
    try:
        await until(lambda: len(collector.connections) == len(conns) or task.done(), "the connections to start")
        yield collector
    finally:
        stop.set()
        await task


def records(tmp: Path) -> list[Record]:
    """Every record the collector of ``tmp`` wrote to its ``modbus`` stream."""
    reader = RecordReader(EmbeddedStore(tmp / "store"), "modbus", "t", PositionStore(tmp / "pos"))
    return reader.poll(max_messages=1_000_000, timeout_s=0).records


def counters(c: Collector, name: str = "plc") -> Any:
    """The counters of connection ``name``."""
    return c.connections[name].counters
