"""Fixtures for the simulator tests: free ports, and all three endpoints serving one manually stepped plant."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import pytest

from simulator.modbus_server import ModbusConfig, ModbusEndpoint
from simulator.opcda_server import OpcDaConfig, OpcDaEndpoint
from simulator.opcua_server import OpcUaConfig, OpcUaEndpoint
from simulator.plant import TepPlant
from simulator.runtime import Simulation

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Served:
    """A simulation (real TEP, stepped only by the test) served on all three endpoints."""

    sim: Simulation
    loop: asyncio.AbstractEventLoop
    opcua_url: str
    modbus_port: int
    opcda_port: int


@pytest.fixture(scope="package")
def served() -> Iterator[Served]:
    sim = Simulation(TepPlant(), seed=5)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sim-endpoints", daemon=True)
    thread.start()
    ports = free_port(), free_port(), free_port()
    endpoints: list[OpcUaEndpoint | ModbusEndpoint | OpcDaEndpoint] = [
        OpcUaEndpoint(sim, OpcUaConfig(port=ports[0])),
        ModbusEndpoint(sim, ModbusConfig(port=ports[1], order="ABCD", order2="DCBA")),
        OpcDaEndpoint(sim, OpcDaConfig(port=ports[2])),
    ]

    async def start() -> None:
        for endpoint in endpoints:
            await endpoint.start()

    async def stop() -> None:
        for endpoint in reversed(endpoints):
            await endpoint.stop()

    started: Future[None] = asyncio.run_coroutine_threadsafe(start(), loop)
    started.result(60)
    try:
        yield Served(sim, loop, f"opc.tcp://127.0.0.1:{ports[0]}/", ports[1], ports[2])
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
