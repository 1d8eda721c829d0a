"""The OPC UA collector against the simulator's real OPC UA server (asyncua on both sides)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from devkit.peers import free_port
from gateway.collector import Collector
from gateway.record import Kind, Quality, Record
from gateway.sources.deadband import Deadband, DeadbandFilter
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import PositionStore, RecordReader, StreamSpec
from gateway.streams.embedded import EmbeddedStore

NS = "urn:factoryedge:tep"


async def _collect(tmp: Path, conns: list[OpcUaConnection], done: Callable[[Collector], bool]) -> Collector:
    store = EmbeddedStore(tmp / "store")
    collector = Collector("test", store, StreamSpec(name="opcua"), OpcUaSource, status_dir=tmp / "status")
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(conns, stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not done(collector):
        assert loop.time() < deadline, {n: c.counters for n, c in collector.connections.items()}
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return collector


def _records(tmp: Path) -> list[Record]:
    reader = RecordReader(EmbeddedStore(tmp / "store"), "opcua", "t", PositionStore(tmp / "pos"))
    return reader.poll(max_messages=100_000, timeout_s=0).records


def _written(name: str, n: int) -> Callable[[Collector], bool]:
    return lambda c: name in c.connections and c.connections[name].counters.values_written >= n


def test_subscription_reads_plant_values_with_mapping(tmp_path: Path, simulator: int) -> None:
    conn = OpcUaConnection(
        name="plant", endpoint=f"opc.tcp://127.0.0.1:{simulator}", namespace_uri=NS,
        nodes=["s=Reactor/Pressure", "s=Reactor/Temperature", "s=Stripper/Level"],
        publishing_interval_ms=100, tag_map={"Reactor/Pressure": "/site/area1/tep/reactor/pressure"},
        tag_prefix="tep/",
    )
    asyncio.run(_collect(tmp_path, [conn], _written("plant", 30)))
    records = _records(tmp_path)
    by_tag: dict[str, list[Record]] = {}
    for r in records:
        by_tag.setdefault(r.tag, []).append(r)
    assert set(by_tag) == {"/site/area1/tep/reactor/pressure", "tep/Reactor/Temperature", "tep/Stripper/Level"}
    pressures = [r.value for r in by_tag["/site/area1/tep/reactor/pressure"] if r.kind == Kind.VALUE]
    [meta] = [r.value for r in by_tag["/site/area1/tep/reactor/pressure"] if r.kind == Kind.META]  # its units
    assert isinstance(meta, dict) and meta["unit"] == "kPa", meta
    assert all(isinstance(p, float) and 2600 < p < 2800 for p in pressures), pressures[:5]
    assert all(r.quality == Quality.GOOD and r.source == "plant" for r in records)
    assert all(abs(r.gateway_ts_ns - r.source_ts_ns) < 30e9 for r in records)
    assert len({r.id for r in records}) == len(records)


def test_unknown_node_goes_bad_and_the_rest_flows(tmp_path: Path, simulator: int) -> None:
    conn = OpcUaConnection(name="plant", endpoint=f"opc.tcp://127.0.0.1:{simulator}", namespace_uri=NS,
                           nodes=["s=Reactor/Pressure", "s=Reactor/NoSuchTag"], publishing_interval_ms=100)
    asyncio.run(_collect(tmp_path, [conn], _written("plant", 10)))
    records = _records(tmp_path)
    bad = [r for r in records if r.tag == "Reactor/NoSuchTag"]
    assert bad and all(r.quality == Quality.BAD and r.value is None for r in bad)
    assert sum(r.tag == "Reactor/Pressure" for r in records) >= 5


def test_unreachable_server_does_not_stall_another_connection(tmp_path: Path, simulator: int) -> None:
    good = OpcUaConnection(name="good", endpoint=f"opc.tcp://127.0.0.1:{simulator}", namespace_uri=NS,
                           nodes=["s=Reactor/Pressure"], publishing_interval_ms=100)
    dead = OpcUaConnection(name="dead", endpoint=f"opc.tcp://127.0.0.1:{free_port()}", nodes=["ns=2;s=X"],
                           reconnect_min_s=0.05, reconnect_max_s=0.2, timeout_s=1)
    def done(c: Collector) -> bool:
        return (_written("good", 10)(c) and "dead" in c.connections
                and c.connections["dead"].counters.connect_retries >= 2)

    collector = asyncio.run(_collect(tmp_path, [good, dead], done))
    status = collector.status()["connections"]
    assert status["dead"]["connected"] is False and "cannot connect" in status["dead"]["last_error"]
    assert status["good"]["values_written"] >= 10


def test_deadband_and_heartbeat() -> None:
    f = DeadbandFilter(Deadband(absolute=0.5, percent=None, heartbeat_s=10))
    s = 1_000_000_000
    assert f.accept("t", 10.0, Quality.GOOD, 0)
    assert not f.accept("t", 10.4, Quality.GOOD, 1 * s)       # within 0.5
    assert f.accept("t", 10.6, Quality.GOOD, 2 * s)           # moved
    assert f.accept("t", 10.6, Quality.BAD, 3 * s)            # quality change always goes
    assert not f.accept("t", 10.6, Quality.BAD, 4 * s)
    assert f.accept("t", 10.6, Quality.BAD, 14 * s)           # heartbeat
    pct = DeadbandFilter(Deadband(percent=1.0))
    assert pct.accept("p", 200.0, Quality.GOOD, 0)
    assert not pct.accept("p", 201.9, Quality.GOOD, s)
    assert pct.accept("p", 202.1, Quality.GOOD, 2 * s)
    assert pct.accept("s", "A", Quality.GOOD, 0) and not pct.accept("s", "A", Quality.GOOD, s)
