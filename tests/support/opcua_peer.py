"""The independent OPC UA server (node-opcua, tests/peers/opcua_server.js) as a test peer, and an OPC UA
collector run against it: start it, build a connection to it, run a collector until a condition, read what it wrote.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devkit.peers import ROOT, Proc, free_port, start, wait_for
from gateway.collector import Collector
from gateway.record import Record
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams.embedded import EmbeddedStore

SCRIPT = ROOT / "tests" / "peers" / "opcua_server.js"
URI = "urn:factoryedge:test"


@dataclass
class NodeOpcUa:
    """A running node-opcua peer; ``restart`` keeps the port and the PKI (so its certificate stays the same)."""

    folder: Path
    port: int
    options: dict[str, Any]
    proc: Proc | None = None
    ns: int = 0
    cert: Path = field(default_factory=Path)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    def start(self) -> NodeOpcUa:
        o = self.options
        cmd = ["node", str(SCRIPT), "--port", str(self.port), "--pki", str(self.pki),
               "--variables", str(o.get("variables", 10)), "--rate", str(o.get("rate", 10)),
               "--security", o.get("security", "none"), "--namespaces-before", str(o.get("namespaces_before", 0))]
        if o.get("user"):
            cmd += ["--user", o["user"]]
        if o.get("auto_accept"):
            cmd.append("--auto-accept")
        if o.get("anonymous") is False:
            cmd.append("--no-anonymous")
        if o.get("values"):
            cmd.append("--values")
        if o.get("names"):
            cmd.append("--names")  # a second namespace with the same names, nested folders (test_opcua_names.py)
        self.starts += 1
        log = self.folder / f"server-{self.starts}.log"
        self.proc = proc = start(cmd, log)
        wait_for(lambda: "READY" in proc.output() or proc.popen.poll() is not None, 60, "node-opcua READY")
        m = re.search(r"READY port=\d+ ns=(\d+) uri=\S+ cert=(\S+)", proc.output())
        assert m, proc.output()
        self.ns, self.cert = int(m.group(1)), Path(m.group(2))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, **changes: Any) -> NodeOpcUa:
        self.stop()
        self.options.update(changes)
        return self.start()

    def trust_client(self, cert: Path, user: bool = False) -> None:
        """Put a client (or user) certificate into the server's trust list (before it starts)."""
        folder = self.pki / ("user/trusted/certs" if user else "trusted/certs")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, folder / (cert.stem + ".der"))


def require_node() -> None:
    if shutil.which("node") is None or not (SCRIPT.parent / "node_modules" / "node-opcua").exists():
        pytest.skip("node-opcua not installed: run scripts/setup.sh")


def start_node_opcua(folder: Path, **options: Any) -> NodeOpcUa:
    require_node()
    folder.mkdir(parents=True, exist_ok=True)
    return NodeOpcUa(folder, options.pop("port", None) or free_port(), options).start()


VALUES_SCRIPT = ROOT / "tests" / "peers" / "opcua_values_server.py"
VALUES_URI = "urn:factoryedge:test:asyncua"


@dataclass
class AsyncUaValues:
    """The asyncua peer with a structure of its own type (tests/peers/opcua_values_server.py), in its own process."""

    proc: Proc
    port: int
    ns: int

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()


def start_asyncua_values(folder: Path) -> AsyncUaValues:
    """Start the asyncua value peer on a free port and wait for it to listen."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start([sys.executable, str(VALUES_SCRIPT), "--port", str(port)], folder / "asyncua-values.log")
    wait_for(lambda: "READY" in proc.output() or proc.popen.poll() is not None, 60, "asyncua value peer READY")
    m = re.search(r"READY port=\d+ ns=(\d+)", proc.output())
    assert m, proc.output()
    return AsyncUaValues(proc, port, int(m.group(1)))


def conn(server: NodeOpcUa, **kw: Any) -> OpcUaConnection:
    base: dict[str, Any] = {"name": "peer", "endpoint": server.url, "namespace_uri": URI,
                            "nodes": ["s=Reactor/Pressure", "s=Reactor/Temperature"], "publishing_interval_ms": 100,
                            "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "timeout_s": 3, "keepalive_s": 1}
    base.update(kw)
    return OpcUaConnection(**base)


async def collect(tmp: Path, conns: list[OpcUaConnection], done: Callable[[Collector], bool],
                  during: Callable[[Collector], Any] | None = None, timeout: float = 60) -> Collector:
    """Run a collector until ``done``; ``during`` may return a coroutine (awaited once, after the first check)."""
    store = EmbeddedStore(tmp / "store")
    collector = Collector("test", store, StreamSpec(name="opcua"), OpcUaSource, status_dir=tmp / "status")
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(conns, stop))
    await until(collector, task, done, timeout)
    stop.set()
    await task
    store.close()
    return collector


@asynccontextmanager
async def running(tmp: Path, conns: list[OpcUaConnection]) -> AsyncIterator[tuple[Collector, asyncio.Task[None]]]:
    """A collector running in the background for scenarios that act on peers while it runs."""
    store = EmbeddedStore(tmp / "store")
    collector = Collector("test", store, StreamSpec(name="opcua"), OpcUaSource, status_dir=tmp / "status")
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(conns, stop))
    try:
        await until(collector, task, lambda col: all(c.name in col.connections for c in conns))
        yield collector, task
    finally:
        stop.set()
        await task
        store.close()


async def until(collector: Collector, task: asyncio.Task[None], done: Callable[[Collector], bool],
                timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(collector):
        assert loop.time() < deadline, {n: c.counters for n, c in collector.connections.items()}
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)


def records(tmp: Path) -> list[Record]:
    store = EmbeddedStore(tmp / "store")
    reader = RecordReader(store, "opcua", "t", PositionStore(tmp / "pos"))
    out = reader.poll(max_messages=100_000, timeout_s=0).records
    store.close()
    return out


def written(name: str, n: int) -> Callable[[Collector], bool]:
    return lambda c: name in c.connections and c.connections[name].counters.values_written >= n


def counters(c: Collector, name: str = "peer") -> Any:
    return c.connections[name].counters
