"""Wires a simulation, its clock and the endpoints together, and prints the status line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from simulator.plant import IdvEvent, make_plant
from simulator.plantproc import RemoteSimulation
from simulator.runtime import Simulation, SimulationView, Snapshot, run_clock
from simulator.tags import PROCESS_TAGS, format_time, key_values_text

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """What the app needs from an endpoint: start serving, stop serving. ``start`` returns once listening."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class AppConfig:
    """Everything ``python -m simulator`` runs with (built by ``simulator.cli``)."""

    plant: str = "tep"
    seed: int = 1
    speed: float = 1.0
    schedule: Sequence[IdvEvent] = ()
    status_every_s: float = 5.0
    endpoints: list[Endpoint] = field(default_factory=list)
    #: run the plant in its own process (the default of ``python -m simulator``; see simulator.plantproc)
    plant_process: bool = False
    #: undisturbed simulated seconds after every reset before time starts (see simulator.runtime.Simulation)
    warmup_s: float = 0.0


def status_line(snap: Snapshot) -> str:
    """One line: simulated time, disturbances, key process values, trip state."""
    values: dict[str, float | None] = {tag.path: v for tag, v in zip(PROCESS_TAGS, snap.values, strict=True)}
    line = f"t={format_time(snap.t_s)} idv=[{snap.idv_text or '-'}] {key_values_text(values)}"
    if snap.shutdown:
        line += f" | TRIPPED: {snap.shutdown_reason} (reset to restart)"
    return line


async def run_app(
    config: AppConfig, sim: Simulation | RemoteSimulation, stop: asyncio.Event, out: TextIO = sys.stdout
) -> None:
    """Start the endpoints, run the clock until ``stop`` is set, then stop everything.

    With a :class:`RemoteSimulation` the clock runs in the plant process; here its changes are watched.
    """
    started: list[Endpoint] = []
    try:
        for endpoint in config.endpoints:
            await endpoint.start()
            started.append(endpoint)
            print(f"READY {endpoint.name} {_where(endpoint)}", file=out, flush=True)
        print(f"RUNNING plant={config.plant} seed={config.seed} speed={config.speed:g}", file=out, flush=True)
        if isinstance(sim, RemoteSimulation):
            clock = asyncio.create_task(sim.watch(stop), name="watch")
        else:
            clock = asyncio.create_task(run_clock(sim, config.speed, stop), name="clock")
        status = asyncio.create_task(_status_loop(sim, config.status_every_s, stop, out), name="status")
        await stop.wait()
        for task in (clock, status):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        for endpoint in reversed(started):
            try:
                await endpoint.stop()
            except (OSError, RuntimeError) as exc:  # stopping must go on for the others
                log.warning("stopping %s failed: %s", endpoint.name, exc)


def _where(endpoint: Endpoint) -> str:
    config = getattr(endpoint, "config", None)
    url = getattr(config, "url", None)
    if url:
        return str(url)
    return f"{getattr(config, 'host', '?')}:{getattr(config, 'port', '?')}"


async def _status_loop(sim: SimulationView, every_s: float, stop: asyncio.Event, out: TextIO) -> None:
    if every_s <= 0:
        return
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        print(status_line(sim.snapshot), file=out, flush=True)


async def serve_forever(config: AppConfig, sim: Simulation | RemoteSimulation) -> None:
    """Run the app until SIGINT or SIGTERM."""
    # The OPC DA daemon serves from threads. With the default 5 ms switch interval a busy daemon thread holds the
    # interpreter lock while the event loop (OPC UA, Modbus) waits to get it back after every socket send.
    sys.setswitchinterval(0.0002)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    await run_app(config, sim, stop)


def build_simulation(config: AppConfig) -> Simulation | RemoteSimulation:
    """The simulation ``config`` asks for; a :class:`RemoteSimulation` is started (call ``close()`` after)."""
    if config.plant_process:
        remote = RemoteSimulation(config.plant, config.seed, config.schedule, config.speed, config.warmup_s)
        remote.start()
        return remote
    return Simulation(make_plant(config.plant), config.seed, config.schedule, config.warmup_s)
