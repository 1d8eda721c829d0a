"""Fixtures for the simulator tests: all three endpoints serving one manually stepped plant."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from devkit.peers import free_port
from simulator.modbus_server import ModbusConfig, ModbusEndpoint
from simulator.opcda_server import OpcDaConfig, OpcDaEndpoint
from simulator.opcua_server import OpcUaConfig, OpcUaEndpoint
from simulator.plant import TepPlant
from simulator.runtime import Simulation
from tests.support.simulator import Served


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
