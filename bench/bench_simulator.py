"""Simulator figures: simulated seconds per wall second under client load, OPC UA notifications per second.

``run()`` serves the real TEP at ``--speed 0`` on all three endpoints (in-process, 127.0.0.1, free ports) while
one asyncua, one pymodbus and one OpenOPC client each read every tag in a loop, at most once per simulated second.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from simulator.modbus_server import ModbusConfig, ModbusEndpoint
from simulator.opcda_server import ITEM_IDS, OpcDaConfig, OpcDaEndpoint
from simulator.opcua_server import NAMESPACE_URI, OpcUaConfig, OpcUaEndpoint
from simulator.plant import TepPlant
from simulator.runtime import Simulation, run_clock
from simulator.tags import PROCESS_TAGS

DURATION_S = 8.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opcda_reader(port: int, sim: Simulation, stop: threading.Event, reads: list[int]) -> None:
    import OpenOPC

    opc = OpenOPC.open_client("127.0.0.1", port)
    opc.connect()
    last = -1.0
    while not stop.is_set():
        if sim.snapshot.t_s >= last + 1:
            last = sim.snapshot.t_s
            opc.read(list(ITEM_IDS), group="all")
            reads[0] += 1
    opc.close()


def _modbus_reader(port: int, sim: Simulation, stop: threading.Event, reads: list[int]) -> None:
    from pymodbus.client import ModbusTcpClient

    last = -1.0
    with ModbusTcpClient("127.0.0.1", port=port) as client:
        while not stop.is_set():
            if sim.snapshot.t_s >= last + 1:
                last = sim.snapshot.t_s
                client.read_input_registers(0, count=82, device_id=1)
                client.read_input_registers(100, count=7, device_id=1)
                client.read_holding_registers(0, count=24, device_id=1)
                client.read_coils(0, count=28, device_id=1)
                reads[0] += 1


async def _opcua_reader(url: str, sim: Simulation, stop: asyncio.Event, reads: list[int]) -> None:
    from asyncua import Client

    async with Client(url) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(f"ns={ns};s={t.path}") for t in PROCESS_TAGS]
        last = -1.0
        while not stop.is_set():
            if sim.snapshot.t_s >= last + 1:
                last = sim.snapshot.t_s
                await client.read_values(nodes)
                reads[0] += 1
            else:
                await asyncio.sleep(0)


async def _notifications(url: str, seconds: float) -> float:
    from asyncua import Client

    count = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            count[0] += 1

    async with Client(url) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(f"ns={ns};s={t.path}") for t in PROCESS_TAGS]
        sub = await client.create_subscription(10, Handler())
        await sub.subscribe_data_change(nodes, queuesize=10)
        await asyncio.sleep(1.0)  # initial values arrive first: not counted
        start = count[0]
        await asyncio.sleep(seconds)
        return (count[0] - start) / seconds


async def _bench() -> dict[str, float]:
    sim = Simulation(TepPlant(), seed=1)
    ports = _port(), _port(), _port()
    endpoints = [OpcUaEndpoint(sim, OpcUaConfig(port=ports[0])),
                 ModbusEndpoint(sim, ModbusConfig(port=ports[1])), OpcDaEndpoint(sim, OpcDaConfig(port=ports[2]))]
    for endpoint in endpoints:
        await endpoint.start()
    url = f"opc.tcp://127.0.0.1:{ports[0]}/"
    stop, thread_stop = asyncio.Event(), threading.Event()
    counts = {"opcua": [0], "modbus": [0], "opcda": [0]}
    try:
        threads = [threading.Thread(target=_opcda_reader, args=(ports[2], sim, thread_stop, counts["opcda"])),
                   threading.Thread(target=_modbus_reader, args=(ports[1], sim, thread_stop, counts["modbus"]))]
        for thread in threads:
            thread.start()
        ua_reader = asyncio.create_task(_opcua_reader(url, sim, stop, counts["opcua"]))
        clock = asyncio.create_task(run_clock(sim, 0, stop))
        t0, wall0 = sim.snapshot.t_s, time.perf_counter()
        await asyncio.sleep(DURATION_S)
        sim_rate = (sim.snapshot.t_s - t0) / (time.perf_counter() - wall0)
        reads = {k: v[0] / DURATION_S for k, v in counts.items()}
        thread_stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
        notifications = await _notifications(url, 5.0)  # clock still at --speed 0, readers stopped
        stop.set()
        await asyncio.gather(clock, ua_reader)
    finally:
        stop.set()
        thread_stop.set()
        for endpoint in reversed(endpoints):
            await endpoint.stop()
    return {
        "simulator.sim_seconds_per_s": sim_rate,
        "simulator.opcua.notifications_per_s": notifications,
        "simulator.opcua.full_reads_per_s": reads["opcua"],
        "simulator.modbus.full_reads_per_s": reads["modbus"],
        "simulator.opcda.full_reads_per_s": reads["opcda"],
    }


def run() -> dict[str, float]:
    """Run the simulator benchmark (~15 s wall) and return its figures."""
    return asyncio.run(_bench())


if __name__ == "__main__":
    import os

    for key, value in run().items():
        print(f"{key}: {value:.1f}")
    print("load average:", os.getloadavg())
