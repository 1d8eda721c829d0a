"""The source contract (:class:`gateway.sources.common.Source`), run over every protocol module against its real peer.

OPC UA against node-opcua, Modbus TCP against libmodbus, OPC DA against the simulator's OpenOPC gateway: the same
tests, through the production paths: the collector builds each attempt's source from the connection model
(``build()``) and doctor's checks are the model's ``diagnose``. Each protocol is one :class:`Peer`: one running peer
per module (stopped by PID), settings reading two good tags, one tag the peer does not have and one value that
cannot be decoded, and a peer whose values are all marked bad (the simulator after a trip). A protocol that cannot
express a case skips it saying why.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devkit.faultproxy import FaultProxy
from devkit.peers import Proc, free_port
from gateway.collector import Collector
from gateway.components import of_kind
from gateway.diagnostics import Finding
from gateway.record import Kind, Quality, Record, start_seq
from gateway.sources import modbus, opcda, opcua
from gateway.sources.common import Counters, Source
from gateway.sources.modbus_config import ModbusConnection
from gateway.sources.opcda_config import OpcDaConnection
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.modbus_peer import LibModbus, compile_server
from tests.support.opcua_peer import URI, start_node_opcua
from tests.support.simulator import start_opcda_simulator, start_simulator

FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "flush_interval_s": 0.05}
DIAGNOSE_TIMEOUT_S = 2.0
CLOSE_DEADLINE_S = 5.0
PATIENT_S = 30.0
Connection = OpcUaConnection | ModbusConnection | OpcDaConnection


@dataclass
class Peer:
    """One protocol's running real peer and connection settings for it (whose model builds the source).

    ``make(port, faults=True, **settings)`` is a connection to the peer at ``port`` reading the ``good`` tags and,
    with ``faults``, the ``missing`` tag (whose warning names ``reason``) and the ``garbage`` tag.
    """

    protocol: str
    make: Callable[..., Connection]
    port: int
    kill: Callable[[], None]  # SIGKILL by PID
    restart: Callable[[], None]  # on the same port
    stop: Callable[[], None]
    good: tuple[str, ...]
    missing: str
    reason: str
    garbage: str | None  # None: the protocol cannot express it, ``garbage_skip`` says why
    source_time: bool  # the protocol carries a source timestamp
    # settings whose own timeouts are far above any deadline here: a slow machine never trips them, and a peer that
    # hangs is noticed by the test, not by the source
    patient: dict[str, Any]
    proxied: dict[str, Any] = field(default_factory=dict)  # settings for a link through the fault proxy
    garbage_skip: str = ""
    # a peer whose values are all marked bad (the simulator after a trip) and settings reading two of them
    tripped: Callable[[Path], tuple[Proc, Connection]] | None = None
    tripped_skip: str = ""


TRIP = ["--idv", "6"]  # at --speed 0 the synthetic plant runs the 7.5 h to its IDV 6 trip within a second or two


def _opcua(folder: Path) -> Peer:
    server = start_node_opcua(folder, variables=1, rate=10, values=True)

    def make(port: int, faults: bool = True, **kw: Any) -> OpcUaConnection:
        nodes = ["s=Reactor/Pressure", "s=Reactor/Temperature"]
        # Values/Opaque: a structure whose encoding id no data type of the server describes (arrays, such as the
        # String[] NamespaceArray this case read before, are carried now)
        nodes += ["s=Reactor/NoSuchNode", "s=Values/Opaque"] if faults else []
        return OpcUaConnection(**{"name": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": URI,
                                  "nodes": nodes, "publishing_interval_ms": 100, "timeout_s": 3, "keepalive_s": 1,
                                  **FAST, **kw})

    def kill() -> None:
        assert server.proc is not None
        server.proc.stop(signal.SIGKILL)
        server.proc = None

    def restart() -> None:
        server.start()

    def tripped(folder: Path) -> tuple[Proc, Connection]:
        proc, port = start_simulator(folder, speed=0, extra=TRIP)
        return proc, make(port, namespace_uri="urn:factoryedge:tep", nodes=["s=Reactor/Pressure", "s=Reactor/Level"])

    return Peer(protocol="opcua", make=make, port=server.port, kill=kill, restart=restart, stop=server.stop,
                good=("Reactor/Pressure", "Reactor/Temperature"),
                missing="Reactor/NoSuchNode", reason="BadNodeIdUnknown", garbage="Values/Opaque", source_time=True,
                patient={"timeout_s": PATIENT_S, "keepalive_s": PATIENT_S, "watchdog_s": PATIENT_S},
                tripped=tripped)


def _modbus(folder: Path) -> Peer:
    # -m: the odd registers count up on every read, so x and y change; 4-5 hold a float32 NaN (a garbage reading)
    server = LibModbus(compile_server(folder), folder / "peer", {1: {"hr": {0: [0, 1, 0, 1], 4: [0x7FC0, 0]}}},
                       mutate=True)

    def make(port: int, faults: bool = True, **kw: Any) -> ModbusConnection:
        tags: list[dict[str, Any]] = [{"name": "x", "address": 0, "type": "uint32"}, {"name": "y", "address": 3}]
        if faults:  # past the end of the peer's table (10,000 registers): exception 2 for that request alone
            tags += [{"name": "nan", "address": 4, "type": "float32"}, {"name": "gone", "address": 20000}]
        return ModbusConnection(**{"name": "modbus", "host": "127.0.0.1", "port": port, "scan_interval_s": 0.05,
                                   "timeout_s": 0.5, "units": [{"unit_id": 1, "tags": tags}], **FAST, **kw})

    def kill() -> None:
        assert server.proc is not None
        server.proc.stop(signal.SIGKILL)

    return Peer(protocol="modbus", make=make, port=server.port, kill=kill, restart=server.start, stop=server.stop,
                good=("x", "y"), missing="gone",
                reason="holding registers 20000-20000: exception 2", garbage="nan", source_time=False,
                patient={"timeout_s": PATIENT_S},
                tripped_skip="Modbus has no quality: a register answers or its request gets an exception (the case of "
                "the tag the peer does not have)")


def _opcda(folder: Path) -> Peer:
    first, port = start_opcda_simulator(folder, speed=10)
    procs = [first]

    def make(port: int, faults: bool = True, **kw: Any) -> OpcDaConnection:
        items = ["Reactor.Pressure", "Reactor.Level"] + (["Reactor.NoSuchItem"] if faults else [])
        return OpcDaConnection(**{"name": "opcda", "host": "127.0.0.1", "port": port, "server": "FactoryEdge.TEP.1",
                                  "items": items, "allow_plaintext": True, "scan_interval_s": 0.05, "timeout_s": 2.0,
                                  "connect_timeout_s": 2.0, **FAST, **kw})

    def kill() -> None:
        procs[-1].stop(signal.SIGKILL)

    def restart() -> None:
        procs.append(start_opcda_simulator(folder, port=port, speed=10)[0])

    def stop() -> None:
        procs[-1].stop()

    def tripped(folder: Path) -> tuple[Proc, Connection]:
        proc, at = start_opcda_simulator(folder, speed=0, extra=TRIP)
        return proc, make(at, faults=False)

    return Peer(protocol="opcda", make=make, port=port, kill=kill, restart=restart, stop=stop,
                good=("Reactor.Pressure", "Reactor.Level"),
                missing="Reactor.NoSuchItem", reason="The item ID is not defined", garbage=None, source_time=True,
                patient={"timeout_s": PATIENT_S, "connect_timeout_s": PATIENT_S},
                proxied={"rewrite_proxy_host": "always"},  # the per-client object through the proxy too
                tripped=tripped,
                garbage_skip="OPC DA settings name items only, with no type or count to get wrong: the server "
                "converts each VARIANT itself, and the simulator serves scalars only")


STARTERS: dict[str, Callable[[Path], Peer]] = {"opcua": _opcua, "modbus": _modbus, "opcda": _opcda}
SOURCES: dict[str, type[Source]] = {"opcua": opcua.OpcUaSource, "modbus": modbus.ModbusSource,
                                     "opcda": opcda.OpcDaSource}


def test_every_collectors_source_has_a_peer_here() -> None:
    """A new protocol's collector fails here until its source runs through this suite."""
    declared = {spec.source for spec in of_kind("collector")}
    assert {f"{cls.__module__}:{cls.__qualname__}" for cls in SOURCES.values()} == declared
    assert set(STARTERS) == set(SOURCES)


def test_the_connection_model_builds_its_protocols_source(peer: Peer) -> None:
    built = peer.make(peer.port).build()
    assert isinstance(built, SOURCES[peer.protocol]), built


@pytest.fixture(scope="module", params=sorted(STARTERS))
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """One running peer per protocol for the whole module (tests that kill it restart it)."""
    made = STARTERS[request.param](tmp_path_factory.mktemp(request.param))
    yield made
    made.stop()


class Logs(logging.Handler):
    """The gateway's log lines while a run lasts (caplog is per test; the steady run is shared)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Run:
    """A collector running one connection in this event loop: the source's real caller."""

    def __init__(self, tmp: Path, cfg: Connection) -> None:
        self.tmp, self.name = tmp, cfg.name
        self.store = EmbeddedStore(tmp / "store")
        # the production factory: the model builds its source (gateway.plugin), one per connection attempt
        self.collector = Collector("conformance", self.store, StreamSpec(name="values"), lambda c: c.build())
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.collector.run([cfg], self.stop))

    @property
    def counters(self) -> Counters:
        conn = self.collector.connections.get(self.name)
        return conn.counters if conn else Counters()

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            assert loop.time() < deadline, f"timed out waiting for {what}: {self.counters}"
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.02)

    async def more(self, n: int) -> None:
        """Wait until connected and ``n`` more values were written than now."""
        start = self.counters.values_written
        await self.until(lambda: self.counters.connected and self.counters.values_written >= start + n,
                         f"{n} more values")

    async def stalled(self, quiet_s: float = 0.5, timeout: float = 15) -> None:
        """Wait until no value was read for ``quiet_s``: the source is stuck on its peer (polling: mid-request)."""
        loop = asyncio.get_running_loop()
        start = since = loop.time()
        seen = -1
        while loop.time() - since < quiet_s:
            if self.counters.values_read != seen:
                seen, since = self.counters.values_read, loop.time()
            assert loop.time() - start < timeout, f"values kept coming: {self.counters}"
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.02)

    async def finish(self, deadline: float | None = None) -> list[Record]:
        """Stop (within ``deadline`` seconds if given) and return the connection's value records, in stream order."""
        self.stop.set()
        await asyncio.wait_for(self.task, deadline)
        self.store.close()
        store = EmbeddedStore(self.tmp / "store")
        try:
            reader = RecordReader(store, "values", "t", PositionStore(self.tmp / "pos"))
            return [r for r in reader.poll(max_messages=1_000_000, timeout_s=0).records
                    if r.source == self.name and r.kind == Kind.VALUE]
        finally:
            store.close()


@dataclass
class Observed:
    """What one steady run (good, missing and garbage tags together) produced."""

    records: list[Record]
    counters: Counters
    logs: list[str]
    seq_before: int
    seq_after: int

    def of(self, tag: str) -> list[Record]:
        return [r for r in self.records if r.tag == tag]


@pytest.fixture(scope="module")
def steady(peer: Peer, tmp_path_factory: pytest.TempPathFactory) -> Observed:
    """One run per protocol shared by the quality, garbage, timestamp and sequence cases."""
    logs = Logs()
    logging.getLogger("gateway").addHandler(logs)

    async def body() -> Observed:
        before = start_seq()
        run = Run(tmp_path_factory.mktemp(f"steady-{peer.protocol}"), peer.make(peer.port, **peer.patient))
        await run.more(30)
        records = await run.finish()
        return Observed(records, run.counters, logs.lines, before, start_seq())

    try:
        return asyncio.run(body())
    finally:
        logging.getLogger("gateway").removeHandler(logs)


def test_good_values_are_good(peer: Peer, steady: Observed) -> None:
    for tag in peer.good:
        got = steady.of(tag)
        assert len(got) >= 3, (tag, len(got))
        assert all(r.quality == Quality.GOOD for r in got), [r for r in got if r.quality != Quality.GOOD][:3]
        assert all(isinstance(r.value, int | float) and not isinstance(r.value, bool) for r in got), got[:3]
    assert steady.counters.connect_retries == 0, steady.counters


def test_a_tag_the_peer_does_not_have_is_bad_with_a_reason_never_a_number(peer: Peer, steady: Observed) -> None:
    got = steady.of(peer.missing)
    assert got, f"no record for {peer.missing}"
    assert all(r.quality != Quality.GOOD and r.value is None for r in got), got[:3]
    assert steady.counters.read_errors >= 1, steady.counters
    assert any(peer.reason in line for line in steady.logs), steady.logs


def test_values_the_peer_marks_bad_are_bad_with_the_peers_value_or_none(peer: Peer, tmp_path: Path) -> None:
    if peer.tripped is None:
        pytest.skip(peer.tripped_skip)
    proc, cfg = peer.tripped(tmp_path / "tripped")

    async def body() -> list[Record]:
        run = Run(tmp_path, cfg)
        await run.until(lambda: run.counters.bad_values_read >= 2, "the plant's trip")
        return await run.finish()

    try:
        records = asyncio.run(body())
    finally:
        proc.stop()
    for tag in {r.tag for r in records}:
        got = [r for r in records if r.tag == tag]
        first = next((i for i, r in enumerate(got) if r.quality != Quality.GOOD), None)  # GOOD before a late trip
        assert first is not None and all(r.quality != Quality.GOOD for r in got[first:]), (tag, got[-5:])
        # the tripped plant is frozen: a value, if any, is the one the peer holds, the same every time
        value = got[first].value
        assert {r.value for r in got[first:]} == {value}, got[first:][:3]
        assert value is None or (isinstance(value, float) and math.isfinite(value)), value


def test_a_value_that_cannot_be_decoded_is_bad_for_that_tag_alone(peer: Peer, steady: Observed) -> None:
    if peer.garbage is None:
        pytest.skip(peer.garbage_skip)
    got = steady.of(peer.garbage)
    assert got, f"no record for {peer.garbage}"
    assert all(r.quality == Quality.BAD and r.value is None for r in got), got[:3]
    last_bad = max(r.seq for r in got)
    for tag in peer.good:  # the other tags keep flowing, GOOD, after it
        assert any(r.seq > last_bad and r.quality == Quality.GOOD for r in steady.of(tag)), tag
    assert steady.counters.bad_values_read >= len(got) and steady.counters.connect_retries == 0, steady.counters


def test_source_timestamps_when_the_protocol_has_them_else_the_read_time(peer: Peer, steady: Observed) -> None:
    good = [r for tag in peer.good for r in steady.of(tag)]
    if peer.source_time:  # the peer's own time: never the read time (same host clock, so not after it either)
        assert all(r.source_ts_ns != r.gateway_ts_ns for r in good), [r for r in good
                                                                       if r.source_ts_ns == r.gateway_ts_ns][:3]
        assert all(r.source_ts_ns <= r.gateway_ts_ns + 1e9 for r in good), good[:3]
    else:
        assert all(r.source_ts_ns == r.gateway_ts_ns for r in good), good[:3]


def test_sequence_numbers_rise_by_one_from_the_start_time(steady: Observed) -> None:
    seqs = [r.seq for r in steady.records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]
    assert steady.seq_before < seqs[0] <= steady.seq_after  # record.start_seq: microseconds at the start


def test_a_killed_peer_is_reconnected_with_bad_records_for_the_outage(peer: Peer, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway")
    async def body() -> tuple[list[Record], Counters, int, int]:
        run = Run(tmp_path, peer.make(peer.port, faults=False))
        await run.more(10)
        killed = time.time_ns()
        await asyncio.to_thread(peer.kill)
        await run.until(lambda: not run.counters.connected, "the kill noticed")
        errors = run.counters.read_errors
        await run.until(lambda: run.counters.read_errors > errors, "a reconnect refused while the peer is down")
        restarted = time.time_ns()
        await asyncio.to_thread(peer.restart)
        await run.more(10)
        return await run.finish(), run.counters, killed, restarted

    records, counters, killed, restarted = asyncio.run(body())
    assert counters.connect_retries >= 2 and counters.connected, counters
    said = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.sources")]
    assert not [m for m in set(said) if said.count(m) > 1], said  # a state is logged when it changes, not per attempt
    seqs = [r.seq for r in records]
    assert seqs == sorted(set(seqs)), "sequence numbers not rising across the reconnect"
    for tag in peer.good:
        got = [(r.quality, r.value, r.gateway_ts_ns) for r in records if r.tag == tag]
        bad = [i for i, (q, _, _) in enumerate(got) if q != Quality.GOOD]
        assert len(bad) == 1, (tag, [(q.name, v) for q, v, _ in got][-12:])  # one BAD per tag and outage
        i = bad[0]
        assert i > 0 and killed <= got[i][2] <= restarted, (tag, got[i - 1 : i + 2])
        assert got[i][1] is None or got[i][1] == got[i - 1][1], (tag, got[i - 1 : i + 1])  # never made up
        assert any(q == Quality.GOOD and ts > restarted for q, _, ts in got[i + 1 :]), (tag, got[i:][:5])


def test_diagnose_passes_for_the_live_peer(peer: Peer) -> None:
    findings = asyncio.run(peer.make(peer.port, faults=False).diagnose(DIAGNOSE_TIMEOUT_S))
    assert findings and all(isinstance(f, Finding) for f in findings), findings
    assert all(f.ok is not False for f in findings), [f for f in findings if f.ok is False]
    assert any(f.ok for f in findings), findings


def test_diagnose_fails_for_a_dead_port_within_its_timeout(peer: Peer) -> None:
    t0 = time.monotonic()
    findings = asyncio.run(peer.make(free_port(), faults=False).diagnose(DIAGNOSE_TIMEOUT_S))
    elapsed = time.monotonic() - t0
    assert elapsed < DIAGNOSE_TIMEOUT_S, elapsed
    failed = [f for f in findings if f.ok is False]
    assert failed and all(f.fix for f in failed), findings


def test_diagnose_of_a_peer_that_hangs_fails_within_its_timeout(peer: Peer) -> None:
    proxy = FaultProxy(peer.port).start()
    proxy.blackhole()  # connections are accepted (the listen backlog) and never answered
    try:
        t0 = time.monotonic()
        cfg = peer.make(proxy.port, **peer.proxied, **peer.patient)  # every tag: one request each may hang
        findings = asyncio.run(cfg.diagnose(DIAGNOSE_TIMEOUT_S))
        elapsed = time.monotonic() - t0
    finally:
        proxy.stop()
    assert elapsed < DIAGNOSE_TIMEOUT_S + 1, (elapsed, findings)  # scheduling slack, not a second timeout
    failed = [f for f in findings if f.ok is False]
    assert failed and all(f.fix for f in failed), findings


def test_stop_returns_within_a_deadline_while_the_peer_hangs(peer: Peer, tmp_path: Path) -> None:
    proxy = FaultProxy(peer.port).start()

    async def body() -> float:
        run = Run(tmp_path, peer.make(proxy.port, faults=False, **peer.proxied, **peer.patient))
        await run.more(5)
        await asyncio.to_thread(proxy.blackhole)  # a cut link: the peer answers nothing, sockets stay open
        await run.stalled()
        t0 = time.monotonic()
        await run.finish(deadline=CLOSE_DEADLINE_S)  # TimeoutError here is the failure
        return time.monotonic() - t0

    try:
        elapsed = asyncio.run(body())
    finally:
        proxy.stop()
    assert elapsed < CLOSE_DEADLINE_S, elapsed
