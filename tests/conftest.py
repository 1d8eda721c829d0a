"""Shared fixtures: real peers started per test session and stopped by PID."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.kinesis_peer import Kinesalite, start_kinesalite
from devkit.peers import Mosquitto, start_mosquitto
from gateway.ipc_connection import SOCKET_ENV, TOKEN_ENV
from tests.support.modbus_peer import LibModbus, Tables, compile_server
from tests.support.opcua_peer import NodeOpcUa, start_node_opcua
from tests.support.simulator import start_simulator


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


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[int]:
    proc, port = start_simulator(tmp_path)
    yield port
    proc.stop()


@pytest.fixture(scope="session")
def node_opcua_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeOpcUa]:
    """One node-opcua peer for the OPC UA tests that only read from it (None and SignAndEncrypt, any client cert)."""
    server = start_node_opcua(tmp_path_factory.mktemp("node-opcua"), variables=20, rate=10, namespaces_before=1,
                              security="none,signandencrypt", auto_accept=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def libmodbus_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The libmodbus C server (tests/peers/modbus_server.c), compiled once per session."""
    return compile_server(tmp_path_factory.mktemp("libmodbus"))


@pytest.fixture
def peers(libmodbus_bin: Path, tmp_path: Path) -> Iterator[Callable[..., LibModbus]]:
    """Start libmodbus servers on tables (``peers(tables, **options)``); all are stopped after the test."""
    started: list[LibModbus] = []

    def make(tables: Tables, **kw: Any) -> LibModbus:
        started.append(LibModbus(libmodbus_bin, tmp_path / f"srv{len(started)}", tables, **kw))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def ipc_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment of a publisher under Greengrass: the IPC socket path (returned; nothing listens yet), its
    token and the thing name."""
    with tempfile.TemporaryDirectory(prefix="ipc") as folder:  # Unix socket paths are limited to 107 bytes
        sock = Path(folder) / "ipc.sock"
        monkeypatch.setenv(SOCKET_ENV, str(sock))
        monkeypatch.setenv(TOKEN_ENV, "token-publisher")
        monkeypatch.setenv("AWS_IOT_THING_NAME", "line1-gw")
        yield sock
