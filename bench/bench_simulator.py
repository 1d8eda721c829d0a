"""Simulator figures: how fast the plant runs under client load, OPC UA notifications per second.

``run()`` starts ``python -m simulator --plant tep`` with all three endpoints on 127.0.0.1, then one client per
protocol, each in its own process, with the protocol's real client library (asyncua, pymodbus, OpenOPC's
``open_client``). A client paces itself on the simulated-time tag: it polls that tag, and whenever simulated time
has advanced by at least 1 s since its last sweep it reads every tag (41 XMEAS, 12 XMV and the simulated time)
once. Over ``DURATION_S`` wall seconds at ``--speed 0`` the bench reports:

- ``simulator.speed0.plant_sim_seconds_per_s``: how fast the plant ran flat out while being swept, whether or not
  the clients kept up;
- ``simulator.speed0.<protocol>.sweeps_per_sim_s``: sweeps each client achieved per simulated second (about 1 when
  it kept up) and ``...sweeps_per_s`` per wall second (what one client manages under this load);
- ``simulator.opcua.notifications_per_s``: data changes one asyncua subscription on every process tag receives
  at ``--speed 0``, the sweeping clients stopped.

Retired (issue 17): ``simulator.sim_seconds_per_s``, simulated seconds per wall second in which every client read
every tag every simulated second, and the ``--speed 1000`` run that existed for it. No collector samples the TEP
every simulated second: the plant's own sampling is 3 minutes, and reading 53 tags every simulated second at
1,000x needed about three free cores for the clients alone. ``bench/bench_scenario_tep.py`` measures what matters
instead: a 48 h run at >= 500x through the real collectors at the 3-minute cadence, the detector and the publisher
(``scenario.tep.speedup``, ``scenario.tep.alarm_delay_s``).

Run alone: ``python -m bench.bench_simulator [seconds] [speed ...]`` (prints the figures and the load average).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devkit.peers import free_port
from simulator.tags import PROCESS_TAGS

ROOT = Path(__file__).resolve().parents[1]
DURATION_S = 20.0
NOTIFY_S = 5.0
PROTOCOLS = ("opcua", "modbus", "opcda")
NAMESPACE_URI = "urn:factoryedge:tep"


# ---------------------------------------------------------------- clients (each runs in its own process)
#: Wall seconds a client waits after a poll that found no new simulated second: a real client would not hammer
#: the server, and a busy poll loop steals the CPU the simulator needs to move on.
POLL_PAUSE_S = 0.0002


class _Pacer:
    """Counts sweeps; a sweep is due when simulated time moved >= 1 s since the last one."""

    def __init__(self) -> None:
        self.last = float("-inf")
        self.sweeps = 0
        self.polls = 0
        self.first_t: float | None = None
        self.last_t = 0.0

    def due(self, t_s: float) -> bool:
        self.polls += 1
        if self.first_t is None:
            self.first_t = t_s
        self.last_t = t_s
        if t_s >= self.last + 1.0:
            return True
        time.sleep(POLL_PAUSE_S)
        return False

    def swept(self, t_s: float) -> None:
        self.sweeps += 1
        self.last = t_s
        self.last_t = max(self.last_t, t_s)

    def report(self, wall_s: float) -> dict[str, float]:
        return {"sweeps": self.sweeps, "polls": self.polls, "first_t": self.first_t or 0.0,
                "last_t": self.last_t, "wall_s": wall_s}


async def _opcua_client(port: int, seconds: float) -> dict[str, float]:
    from asyncua import Client

    async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=30) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        clock = client.get_node(f"ns={ns};s=Simulator/SimulatedTime")
        nodes = [client.get_node(f"ns={ns};s={t.path}") for t in PROCESS_TAGS] + [clock]
        _ready()
        pacer, started = _Pacer(), time.perf_counter()
        while time.perf_counter() - started < seconds:
            if pacer.due(await clock.read_value()):
                values = await client.read_values(nodes)
                pacer.swept(float(values[-1]))
        return pacer.report(time.perf_counter() - started)


def _modbus_client(port: int, seconds: float) -> dict[str, float]:
    import struct

    from pymodbus.client import ModbusTcpClient

    def sim_time(registers: list[int]) -> float:
        return float(struct.unpack(">I", struct.pack(">HH", registers[0], registers[1]))[0])

    with ModbusTcpClient("127.0.0.1", port=port, timeout=30) as client:
        _ready()
        pacer, started = _Pacer(), time.perf_counter()
        while time.perf_counter() - started < seconds:
            # The poll reads the whole status block (time, seed, disturbances, trip): it is part of the sweep.
            status = client.read_input_registers(100, count=7, device_id=1)
            if status.isError():
                raise RuntimeError(f"Modbus read failed: {status}")
            t_s = sim_time(status.registers)
            if pacer.due(t_s):
                xmeas = client.read_input_registers(0, count=82, device_id=1)
                xmv = client.read_holding_registers(0, count=24, device_id=1)
                if xmeas.isError() or xmv.isError():
                    raise RuntimeError(f"Modbus read failed: {xmeas} {xmv}")
                pacer.swept(t_s)
        return pacer.report(time.perf_counter() - started)


def _opcda_client(port: int, seconds: float) -> dict[str, float]:
    import OpenOPC
    import Pyro4

    Pyro4.config.COMMTIMEOUT = 30
    opc = OpenOPC.open_client("127.0.0.1", port)
    opc.connect()
    items = [t.path.replace("/", ".") for t in PROCESS_TAGS] + ["Simulator.SimulatedTime"]
    opc.read(items, group="all")
    _ready()
    pacer, started = _Pacer(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        if pacer.due(float(opc.read("Simulator.SimulatedTime")[0])):
            rows = opc.read(group="all")
            pacer.swept(float(rows[-1][1]))
    report = pacer.report(time.perf_counter() - started)
    opc.close()
    return report


def _ready() -> None:
    """Tell the bench this client is connected, then wait for its go."""
    print("CONNECTED", flush=True)
    sys.stdin.readline()


def client_main(protocol: str, port: int, seconds: float) -> None:
    """Entry point of one client process: prints its report as one JSON line."""
    if protocol == "opcua":
        report = asyncio.run(_opcua_client(port, seconds))
    elif protocol == "modbus":
        report = _modbus_client(port, seconds)
    else:
        report = _opcda_client(port, seconds)
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------- the bench
def _wait_line(proc: subprocess.Popen[str], prefix: str, deadline_s: float, seen: list[str]) -> None:
    cmd = " ".join(map(str, proc.args)) if isinstance(proc.args, list) else str(proc.args)
    end = time.monotonic() + deadline_s
    assert proc.stdout is not None
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process {cmd} ended before printing {prefix!r}: {''.join(seen)}")
        seen.append(line)
        if line.startswith(prefix):
            return
    raise RuntimeError(f"process {cmd} did not print {prefix!r} within {deadline_s} s")


async def _notifications(url: str, seconds: float) -> float:
    from asyncua import Client

    count = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            count[0] += 1

    async with Client(url, timeout=30) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(f"ns={ns};s={t.path}") for t in PROCESS_TAGS]
        sub = await client.create_subscription(10, Handler())
        await sub.subscribe_data_change(nodes, queuesize=10)
        await asyncio.sleep(1.0)  # initial values arrive first: not counted
        start = count[0]
        await asyncio.sleep(seconds)
        return (count[0] - start) / seconds


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def measure(
    speed: float, duration_s: float = DURATION_S, notify_s: float = 0.0, protocols: tuple[str, ...] = PROTOCOLS
) -> dict[str, float]:
    """Serve the TEP at ``speed``, sweep it with one client per protocol for ``duration_s``, return the figures.

    With ``notify_s`` > 0, an asyncua subscription then counts notifications for that long. ``protocols`` limits
    the sweeping clients (all three endpoints serve regardless), to see what one protocol costs.
    """
    ports = {p: free_port() for p in PROTOCOLS}
    server = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--plant", "tep", "--speed", f"{speed:g}", "--seed", "1",
         "--status-every", "0", "--opcua-port", str(ports["opcua"]), "--modbus-port", str(ports["modbus"]),
         "--opcda-port", str(ports["opcda"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    clients: dict[str, subprocess.Popen[str]] = {}
    notifications = 0.0
    try:
        _wait_line(server, "RUNNING", 120, [])
        for protocol in protocols:
            clients[protocol] = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_simulator", "client", protocol, str(ports[protocol]),
                 str(duration_s)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        for proc in clients.values():
            _wait_line(proc, "CONNECTED", 60, [])
        for proc in clients.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = {}
        for protocol, proc in clients.items():
            out, _ = proc.communicate(timeout=duration_s + 60)
            reports[protocol] = json.loads(out.strip().splitlines()[-1])
        if notify_s > 0:
            notifications = asyncio.run(_notifications(f"opc.tcp://127.0.0.1:{ports['opcua']}/", notify_s))
    finally:
        for proc in clients.values():
            _stop(proc)
        _stop(server)
    figures: dict[str, float] = {}
    rates = []
    for protocol, r in reports.items():
        sim_s = max(r["last_t"] - r["first_t"], 1e-9)
        rates.append(sim_s / r["wall_s"])
        figures[f"{protocol}.sweeps_per_sim_s"] = r["sweeps"] / sim_s
        figures[f"{protocol}.sweeps_per_s"] = r["sweeps"] / r["wall_s"]
    # Every client watched the same clock over (almost) the same window: take the lowest, the conservative one.
    figures["plant_sim_seconds_per_s"] = min(rates)
    if notify_s > 0:
        figures["opcua.notifications_per_s"] = notifications
    return figures


def run() -> dict[str, float]:
    """Run the simulator benchmark (~35 s wall) and return its figures."""
    speed0 = measure(0, notify_s=NOTIFY_S)
    figures = {"simulator.opcua.notifications_per_s": speed0.pop("opcua.notifications_per_s")}
    figures.update({f"simulator.speed0.{k}": v for k, v in speed0.items()})
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "client":
        client_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        sys.exit(0)
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else DURATION_S
    for speed in [float(x) for x in sys.argv[2:]] or [0.0]:
        print(f"--speed {speed:g}, {seconds:g} s, load average before {os.getloadavg()}")
        for key, value in measure(speed, seconds, NOTIFY_S if speed == 0 else 0).items():
            print(f"  {key}: {value:.2f}")
    print("load average after:", os.getloadavg())
