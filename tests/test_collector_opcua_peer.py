"""The OPC UA collector against an independent server (node-opcua, tests/peers/opcua_server.js)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.collector import Collector
from gateway.record import Quality
from tests.support.opcua_peer import NodeOpcUa, collect, conn, counters, records, written


@pytest.fixture
def node_opcua(node_opcua_shared: NodeOpcUa) -> NodeOpcUa:
    return node_opcua_shared


def test_subscription_reads_values_and_types(tmp_path: Path, node_opcua: NodeOpcUa) -> None:
    nodes = ["s=Reactor/Pressure", "s=Reactor/Running", "s=Reactor/Batch", "s=Reactor/Count", "s=Tank/Level"]
    c = conn(node_opcua, nodes=nodes, tag_map={"Reactor/Pressure": "/site/area/line/reactor/pressure"})

    def done(col: Collector) -> bool:
        return written("peer", 60)(col)

    asyncio.run(collect(tmp_path, [c], done))
    recs = records(tmp_path)
    by_tag: dict[str, list[Any]] = {}
    for r in recs:
        by_tag.setdefault(r.tag, []).append(r.value)
    assert set(by_tag) == {"/site/area/line/reactor/pressure", "Reactor/Running", "Reactor/Batch", "Reactor/Count",
                           "Tank/Level"}
    assert all(isinstance(v, float) and 2700 <= v < 2710 for v in by_tag["/site/area/line/reactor/pressure"])
    assert all(isinstance(v, bool) for v in by_tag["Reactor/Running"])
    assert all(isinstance(v, str) and v.startswith("B") for v in by_tag["Reactor/Batch"])
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in by_tag["Reactor/Count"])
    assert len(set(by_tag["Reactor/Count"])) > 3  # values change, each change delivered
    assert all(r.quality == Quality.GOOD and r.source == "peer" for r in recs)
    assert all(abs(r.gateway_ts_ns - r.source_ts_ns) < 30e9 for r in recs)


def test_polling_mode(tmp_path: Path, node_opcua: NodeOpcUa) -> None:
    c = conn(node_opcua, mode="polling", scan_interval_s=0.1, nodes=["s=Reactor/Count", "ns=0;i=2258"])
    asyncio.run(collect(tmp_path, [c], written("peer", 20)))
    recs = records(tmp_path)
    counts = [r.value for r in recs if r.tag == "Reactor/Count" and isinstance(r.value, int)]
    assert len(counts) >= 5 and counts == sorted(counts)
    assert any(r.tag == "2258" and isinstance(r.value, str) for r in recs)  # Server CurrentTime, a datetime


def test_browse_patterns_discover_tags(tmp_path: Path, node_opcua: NodeOpcUa) -> None:
    c = conn(node_opcua, nodes=[], browse=["Objects/Reactor/*", "Objects/**/Level"])
    col = asyncio.run(collect(tmp_path, [c], written("peer", 30)))
    tags = {r.tag for r in records(tmp_path)}
    assert tags == {"Reactor/Pressure", "Reactor/Temperature", "Reactor/Running", "Reactor/Batch", "Reactor/Count",
                    "Tank/Level"}
    assert counters(col).extra["tags"] == 6


def test_unknown_node_ids_bad_while_the_rest_flows(tmp_path: Path, node_opcua: NodeOpcUa) -> None:
    c = conn(node_opcua, nodes=["s=Reactor/Pressure", "s=Reactor/Presure", "nsu=urn:nowhere;s=X"])
    col = asyncio.run(collect(tmp_path, [c], written("peer", 20)))
    recs = records(tmp_path)
    for tag in ("Reactor/Presure", "X"):
        bad = [r for r in recs if r.tag == tag]
        assert bad and all(r.quality == Quality.BAD and r.value is None for r in bad), tag
    assert sum(r.tag == "Reactor/Pressure" and r.quality == Quality.GOOD for r in recs) >= 10
    assert counters(col).read_errors >= 2 and counters(col).connected
