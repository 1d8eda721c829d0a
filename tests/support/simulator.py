"""The simulator as a test peer: its OPC UA or OPC DA endpoint as a process, or all endpoints in this process."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from devkit.peers import Proc, free_port, port_open, start, wait_for
from simulator.runtime import Simulation


def start_simulator(folder: Path, *, speed: float = 10, extra: list[str] | None = None) -> tuple[Proc, int]:
    """The simulator's OPC UA endpoint on the synthetic plant (fast to start, no TEP compile needed)."""
    port = free_port()
    proc = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcua",
                  "--opcua-port", str(port), "--speed", str(speed), "--status-every", "0", *(extra or [])],
                 folder / "simulator.log")
    wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 60, "the simulator's OPC UA endpoint")
    assert proc.popen.poll() is None, proc.output()
    return proc, port


def start_opcda_simulator(folder: Path, *, port: int | None = None, speed: float = 1,
                          extra: list[str] | None = None) -> tuple[Proc, int]:
    """The simulator's OPC DA endpoint (an OpenOPC gateway over Pyro4) on the synthetic plant; ``port`` to restart."""
    port = port or free_port()
    proc = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcda",
                  "--opcda-port", str(port), "--speed", str(speed), "--status-every", "0", *(extra or [])],
                 folder / "simulator-opcda.log")
    wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 60, "the simulator's OPC DA endpoint")
    assert proc.popen.poll() is None, proc.output()
    return proc, port


@dataclass
class Served:
    """A simulation (real TEP, stepped only by the test) served on all three endpoints (the ``served`` fixture)."""

    sim: Simulation
    loop: asyncio.AbstractEventLoop
    opcua_url: str
    modbus_port: int
    opcda_port: int
