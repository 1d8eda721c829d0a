"""Report by exception that keeps its promise (issue 16 items 1, 4 and 6), against node-opcua and asyncua servers:
a static tag is sent again every ``heartbeat_s`` in subscription mode, every record carries the server's status
code, and values the server lost because the collector did not keep up are counted, logged, flagged and recorded
as a gap."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua

from devkit.peers import free_port
from gateway import collector as collector_module
from gateway.cli import checks
from gateway.cli.status import _lost
from gateway.collector import Collector
from gateway.record import Flag, Kind, Quality, Record
from gateway.sources import opcua_subscription
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.statuscodes import name
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.opcua_peer import NodeOpcUa, collect, conn, records, start_node_opcua, until, written

BAD_SENSOR_FAILURE = 0x808C0000
OVERFLOW_BITS = 0x0480
LOST = "values were lost before the gateway read them"


def _values(recs: list[Record], tag: str) -> list[Record]:
    return sorted((r for r in recs if r.tag == tag and r.kind == Kind.VALUE), key=lambda r: r.gateway_ts_ns)


def test_static_tags_are_sent_every_heartbeat_in_subscription_mode(tmp_path: Path,
                                                                    node_opcua_shared: NodeOpcUa) -> None:
    n = 3  # heartbeats after the first value, each within heartbeat_s (1 s) of the one before
    c = conn(node_opcua_shared, nodes=["s=Analog/Temperature", "s=Faults/Sensor"], deadband={"heartbeat_s": 1})
    asyncio.run(collect(tmp_path, [c], written("peer", 2 * (n + 1)), timeout=n + 1 + 30))
    recs = records(tmp_path)
    for tag in ("Analog/Temperature", "Faults/Sensor"):
        got = _values(recs, tag)
        assert len(got) >= n + 1, (tag, got)
        assert got[n].gateway_ts_ns - got[0].gateway_ts_ns <= (n + 1) * 1e9, [r.gateway_ts_ns for r in got]
        assert len({(r.value, r.quality, r.status) for r in got}) == 1, got  # the same value, quality, status
        # a heartbeat is the gateway's observation that the value still holds: stamped now, not the server's reading
        assert all(r.source_ts_ns == r.gateway_ts_ns and not r.flags & Flag.SERVER_TS for r in got[1:]), got
        assert len({r.id for r in got}) == len(got)
    first = _values(recs, "Analog/Temperature")[0]
    assert first.flags & Flag.SERVER_TS and first.source_ts_ns < first.gateway_ts_ns and first.value == 21.5


def test_every_record_carries_the_server_status_code(tmp_path: Path, node_opcua_shared: NodeOpcUa) -> None:
    c = conn(node_opcua_shared, nodes=["s=Faults/Sensor", "s=Reactor/Pressure"])
    asyncio.run(collect(tmp_path, [c], written("peer", 10)))
    recs = records(tmp_path)
    failed = _values(recs, "Faults/Sensor")
    assert failed and all(r.status == BAD_SENSOR_FAILURE and r.quality == Quality.BAD for r in failed), failed
    assert name(failed[0].status) == "BadSensorFailure"
    good = _values(recs, "Reactor/Pressure")
    assert len(good) >= 5 and all(r.status == 0 and r.quality == Quality.GOOD for r in good)


class SlowCollector(Collector):
    """A collector whose stream takes ``1 / delay_s`` values a second while ``slow``: a disk that cannot keep up."""

    delay_s = 0.005
    slow = True

    def _append(self, batch: dict[str, list[Record]]) -> None:
        if self.slow:  # in the collector's stream thread, as a slow disk would
            time.sleep(self.delay_s * sum(len(records) for records in batch.values()))
        super()._append(batch)


async def _overload(tmp: Path, c: OpcUaConnection, done: Callable[[Collector], bool]) -> Collector:
    store = EmbeddedStore(tmp / "store")
    col = SlowCollector("test", store, StreamSpec(name="opcua"), OpcUaSource, status_dir=tmp / "status")
    stop = asyncio.Event()
    task = asyncio.create_task(col.run([c], stop))
    try:
        await until(col, task, done, timeout=90)
    finally:
        col.slow = False  # what is pending is written quickly at stop
        stop.set()
        await task
        store.close()
    return col


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reach the collector's bounds in a second instead of a minute: flush at 200 values (the emitter waits at
    400), hold the server back past 500 notifications waiting."""
    monkeypatch.setattr(collector_module, "FLUSH_AT_RECORDS", 200)
    monkeypatch.setattr(opcua_subscription, "QUEUE", 500)


def test_values_the_server_drops_from_its_queues_are_counted_logged_and_flagged(
        tmp_path: Path, small_bounds: None, caplog: pytest.LogCaptureFixture) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=50, rate=20)  # about 1,100 changes/s
    nodes = [f"s=Bulk/V{i}" for i in range(50)]
    c = conn(server, nodes=nodes, queue_size=4, sampling_interval_ms=0)
    caplog.set_level(logging.WARNING, logger="gateway.sources.opcua_subscription")
    try:
        col = asyncio.run(_overload(tmp_path, c, lambda col: "peer" in col.connections
                                    and col.connections["peer"].counters.values_lost > 0))
    finally:
        server.stop()
    k = col.connections["peer"].counters
    assert k.values_lost > 0 and k.overloads >= 1
    recs = records(tmp_path)
    reported = [r for r in recs if r.kind == Kind.VALUE and r.status & OVERFLOW_BITS == OVERFLOW_BITS]
    assert len(reported) == k.values_lost  # one value per overflow the server reported, its status kept whole
    assert all(r.flags & Flag.OVERFLOW for r in reported), reported[:3]
    lines = [r for r in caplog.records if LOST in r.getMessage()]
    assert 1 <= len(lines) <= k.overloads, [r.getMessage() for r in lines]
    gaps = [r for r in recs if r.kind == Kind.METRIC and r.tag == "collector/peer/gap"]
    assert gaps and all(r.flags & Flag.OVERFLOW and r.quality == Quality.BAD for r in gaps), gaps
    assert all(r.gateway_ts_ns >= r.source_ts_ns for r in gaps)
    status = col.status()["connections"]["peer"]
    assert status["values_lost"] == k.values_lost
    # gatewayctl doctor warns, naming the loss and the fix; gatewayctl status shows it in its column
    finding = checks.source_counters("peer", status, 60.0, time.time_ns())
    assert finding.ok is None and f"{k.values_lost} values with the Overflow bit" in finding.detail, finding
    assert "does not keep up" in finding.fix
    assert _lost({**status, "notification_messages_lost": 2}) == f"{k.values_lost}+2msg"


def test_a_server_held_back_by_a_slow_stream_is_an_overload_with_a_gap_and_flagged_values(
        tmp_path: Path, small_bounds: None, caplog: pytest.LogCaptureFixture) -> None:
    """asyncua's server keeps only the newest value of an item with queue size 1 and never says so: the hold
    itself is what the collector knows, and it says so."""
    port = free_port()
    caplog.set_level(logging.WARNING, logger="gateway.sources.opcua_subscription")

    async def scenario() -> Collector:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
        idx = await server.register_namespace("urn:factoryedge:overload")
        folder = await server.nodes.objects.add_folder(idx, "Fast")
        ids = [ua.NodeId(ua.String(f"Fast/V{i}"), ua.Int16(idx)) for i in range(50)]
        for i, nid in enumerate(ids):
            await folder.add_variable(nid, f"Fast/V{i}", 0.0)
        c = OpcUaConnection(name="peer", endpoint=f"opc.tcp://127.0.0.1:{port}/",
                            namespace_uri="urn:factoryedge:overload", nodes=[f"s=Fast/V{i}" for i in range(50)],
                            publishing_interval_ms=100, queue_size=1, reconnect_min_s=0.1, reconnect_max_s=0.5)

        async def change() -> None:
            k = 0
            while True:
                k += 1
                for nid in ids:
                    await server.write_attribute_value(nid, ua.DataValue(ua.Variant(float(k))))
                await asyncio.sleep(0.02)  # about 2,500 changes/s offered

        async with server:
            changer = asyncio.create_task(change())
            mark: list[int] = []

            def done(col: Collector) -> bool:  # an overload, then 200 values read after it
                if "peer" not in col.connections:
                    return False
                k = col.connections["peer"].counters
                if k.overloads and not mark:
                    mark.append(k.values_read)
                return bool(mark) and k.values_read >= mark[0] + 200

            try:
                return await _overload(tmp_path, c, done)
            finally:
                changer.cancel()

    col = asyncio.run(scenario())
    k = col.connections["peer"].counters
    assert k.overloads >= 1 and k.values_lost == 0 and k.notification_messages_lost == 0
    assert any("the server was not asked for values" in r.getMessage() for r in caplog.records)
    recs = records(tmp_path)
    gaps = [r for r in recs if r.kind == Kind.METRIC and r.tag == "collector/peer/gap"]
    assert gaps and all(r.flags & Flag.OVERFLOW for r in gaps), gaps
    after = [r for r in recs if r.kind == Kind.VALUE and r.seq > gaps[0].seq]
    flagged: dict[str, Any] = {}
    for r in after:
        flagged.setdefault(r.tag, r)
    # the first value of each tag after the hold carries OVERFLOW: its changes meanwhile may be gone
    assert flagged and all(r.flags & Flag.OVERFLOW for r in flagged.values()), list(flagged.values())[:3]
