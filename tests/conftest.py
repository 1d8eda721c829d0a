"""Shared fixtures: real peers started per test session and stopped by PID."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.kinesis_peer import Kinesalite, start_kinesalite
from devkit.peers import Mosquitto, Proc, free_port, port_open, start, start_mosquitto, wait_for


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kinesalite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kinesalite]:
    """kinesalite (npm) on 127.0.0.1: a real Kinesis implementation; each test creates its own stream."""
    peer = start_kinesalite(tmp_path_factory.mktemp("kinesalite"))
    yield peer
    peer.stop()


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


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[int]:
    proc, port = start_simulator(tmp_path)
    yield port
    proc.stop()


@pytest.fixture(scope="session")
def node_opcua_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One node-opcua peer for the OPC UA tests that only read from it (None and SignAndEncrypt, any client cert)."""
    from tests.test_collector_opcua_peer import start_node_opcua

    server = start_node_opcua(tmp_path_factory.mktemp("node-opcua"), variables=20, rate=10, namespaces_before=1,
                              security="none,signandencrypt", auto_accept=True)
    yield server
    server.stop()
