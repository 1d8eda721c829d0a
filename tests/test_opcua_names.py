"""OPC UA tag names are unique per connection (issue 16 item 3): one browse name in two namespaces is two tags,
qualified by the short name of each namespace URI, the same across server restarts (which renumber namespace
indexes); what qualification cannot tell apart is refused at validation in one line naming both node ids.

Against node-opcua (tests/peers/opcua_server.js --names: the same node id string and browse name in two namespaces)
and an asyncua server started here with three namespaces, two of whose URIs end in the same word.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asyncua import Server, ua

from devkit.peers import free_port
from gateway.collector import Collector
from gateway.record import Quality
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_names import Candidate, short_name, unique_names
from gateway.sources.opcua_session import connect, disconnect, resolve
from tests.support.cli import cli
from tests.support.opcua_peer import URI, NodeOpcUa, collect, conn, records, start_node_opcua

TEMP = "Plant/Line1/Tank1/Temperature"
URI2 = URI + ":line2"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeOpcUa]:
    server = start_node_opcua(tmp_path_factory.mktemp("names"), names=True, variables=1, rate=10,
                              namespaces_before=1)
    yield server
    server.stop()


def _ns2(server: NodeOpcUa) -> int:
    assert server.proc is not None
    m = re.search(r"READY .* ns2=(\d+) uri2=(\S+)", server.proc.output())
    assert m and m.group(2) == URI2, server.proc.output()
    return int(m.group(1))


# --- the rule, alone --------------------------------------------------------------------------------------------

def test_short_names_are_the_last_word_of_the_uri_that_is_not_a_version() -> None:
    assert short_name("urn:factoryedge:test:line2") == "line2"
    assert short_name("http://vendor.com/plant/1.04/") == "plant"
    assert short_name("http://opcfoundation.org/UA/") == "UA"
    assert short_name("ns=7") == "ns7"


def test_only_colliding_names_are_qualified_and_taken_names_give_way() -> None:
    a = Candidate("a", "T", "urn:site:a", "s=T")
    b = Candidate("b", "T", "urn:site:b", "s=T")
    c = Candidate("c", "U", "urn:site:a", "s=U")
    assert unique_names([a, b, c]) == {"a": "a:T", "b": "b:T", "c": "U"}
    assert unique_names([c], taken={"U"}) == {"c": "a:U"}
    same_word = Candidate("d", "T", "urn:other:a", "s=T")  # short name 'a' twice: the full node id decides
    assert unique_names([a, same_word, b]) == {"a": "nsu=urn:site:a;s=T", "d": "nsu=urn:other:a;s=T", "b": "b:T"}


# --- refused at validation: what qualification cannot tell apart ------------------------------------------------

def _problem(**kw: object) -> str:
    base: dict[str, object] = {"name": "p", "endpoint": "opc.tcp://127.0.0.1:4840"}
    with pytest.raises(ValueError) as info:
        OpcUaConnection(**{**base, **kw})
    text = str(info.value)
    assert "nodes" in text, text
    return text


def test_the_same_node_twice_is_refused() -> None:
    text = _problem(nodes=["ns=2;s=A", "ns=2;s=B", "ns=2;s=A"])
    assert "nodes lists 'ns=2;s=A' twice" in text and "remove one" in text
    text = _problem(namespace_uri="urn:x", nodes=["s=A", "nsu=urn:x;s=A"])
    assert "'s=A' and 'nsu=urn:x;s=A', the same node" in text


def test_two_explicit_names_the_same_are_refused_naming_both_node_ids() -> None:
    text = _problem(nodes=["ns=2;s=A", "ns=2;s=B"], tag_map={"A": "/site/x", "B": "/site/x"})
    assert "'ns=2;s=A' and 'ns=2;s=B' would both be published as tag '/site/x'" in text
    assert "map each to its own name" in text
    text = _problem(nodes=["ns=2;s=A", "ns=2;s=B"], tag_map={"A": "B"})  # A renamed onto B
    assert "'ns=2;s=A' and 'ns=2;s=B' would both be published as tag 'B'" in text


def test_a_tag_map_key_naming_two_nodes_is_refused_with_the_names_to_use() -> None:
    text = _problem(nodes=[f"nsu={URI};s={TEMP}", f"nsu={URI2};s={TEMP}"], tag_map={TEMP: "/site/t"})
    assert f"tag_map key '{TEMP}' names two nodes, 'nsu={URI};s={TEMP}' and 'nsu={URI2};s={TEMP}'" in text
    assert f"key tag_map by their tags 'test:{TEMP}' and 'line2:{TEMP}'" in text


def test_config_check_refuses_a_collision_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    col = tmp_path / "opcua_collector.yaml"
    col.write_text(json.dumps({"connections": [{"name": "plc", "endpoint": "opc.tcp://10.0.0.5:4840",
                                                "nodes": ["ns=2;s=A", "ns=3;s=B"],
                                                "tag_map": {"A": "/l1/t", "B": "/l1/t"}}]}))
    code, out = cli(capsys, "--json", "config", "check", str(col))
    [result] = json.loads(out)
    [problem] = result["problems"]
    assert code == 2 and "\n" not in problem and "ns=2;s=A" in problem and "ns=3;s=B" in problem, problem
    col.write_text(json.dumps({"connections": [{"name": "plc", "endpoint": "opc.tcp://10.0.0.5:4840",
                                                "nodes": ["ns=2;s=A", "ns=3;s=A"]}]}))
    code, out = cli(capsys, "--json", "config", "check", str(col))
    assert code == 0 and json.loads(out)[0]["valid"]  # told apart by namespace at connect: no problem


# --- node-opcua: two namespaces, one browse name ----------------------------------------------------------------

@pytest.mark.parametrize("form", ["nsu", "ns"])
def test_one_browse_name_in_two_namespaces_is_two_tags(tmp_path: Path, plant: NodeOpcUa, form: str) -> None:
    nodes = ([f"nsu={URI};s={TEMP}", f"nsu={URI2};s={TEMP}"] if form == "nsu"
             else [f"ns={plant.ns};s={TEMP}", f"ns={_ns2(plant)};s={TEMP}"])
    c = conn(plant, namespace_uri=None, nodes=nodes)
    want = {f"test:{TEMP}", f"line2:{TEMP}"}
    seen: set[str] = set()

    def done(col: Collector) -> bool:
        n = col.connections["peer"].counters.values_written if "peer" in col.connections else 0
        return n >= 20

    asyncio.run(collect(tmp_path, [c], done))
    by_tag: dict[str, list[float]] = {}
    for r in records(tmp_path):
        seen.add(r.tag)
        assert r.quality == Quality.GOOD and isinstance(r.value, float), r
        by_tag.setdefault(r.tag, []).append(r.value)
    assert seen == want
    assert all(20 <= v < 21.5 for v in by_tag[f"test:{TEMP}"])
    assert all(80 <= v < 81.5 for v in by_tag[f"line2:{TEMP}"])


async def _resolved(cfg: OpcUaConnection) -> dict[str, str]:
    client = await connect(cfg)
    try:
        r = await resolve(client, cfg)
        return {tag: node.nodeid.to_string() for tag, node in r.nodes.items()}
    finally:
        await disconnect(client)


def test_browsed_collisions_are_qualified_the_same_across_restarts_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_node_opcua(tmp_path / "peer", names=True, variables=1, rate=1, namespaces_before=0)
    try:
        cfg = conn(server, name="names-restart", nodes=[], browse=["Plant/**/Temperature", "Plant/**/Level"])
        caplog.set_level(logging.WARNING, logger="gateway.sources.opcua_session")
        first = asyncio.run(_resolved(cfg))
        again = asyncio.run(_resolved(cfg))  # a reconnect: nothing new to say
        server.restart(namespaces_before=3)  # every namespace index moves by three
        after = asyncio.run(_resolved(cfg))
    finally:
        server.stop()
    assert set(first) == {f"test:{TEMP}", f"line2:{TEMP}", "Plant/Line1/Tank1/Level"}
    assert set(after) == set(first) == set(again)
    assert all(first[t] != after[t] for t in first)  # same names, other indexes
    lines = [r.getMessage() for r in caplog.records if "is on more than one node" in r.getMessage()]
    assert len(lines) == 2 and all(TEMP in line for line in lines), lines


def test_a_configured_node_keeps_its_name_and_a_browsed_namesake_gives_way(plant: NodeOpcUa) -> None:
    cfg = conn(plant, nodes=[f"s={TEMP}"], browse=["Plant/**/Temperature"])  # namespace_uri: the first one
    tags = asyncio.run(_resolved(cfg))
    assert tags == {TEMP: f"ns={plant.ns};s={TEMP}", f"line2:{TEMP}": f"ns={_ns2(plant)};s={TEMP}"}


# --- asyncua: three namespaces, two URIs ending in the same word ------------------------------------------------

URIS = ["urn:site:plantA", "urn:other:plantA", "http://example.com/plantB/1.0/"]


@asynccontextmanager
async def _asyncua_plant(port: int) -> AsyncIterator[Server]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = [await server.register_namespace(u) for u in URIS]
    folder = await server.nodes.objects.add_folder(f"ns={idx[0]};s=Plant", f"{idx[0]}:Plant")
    for k, i in enumerate(idx):
        await folder.add_variable(f"ns={i};i=1001", f"{i}:Flow", float(k))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_asyncua_numeric_ids_in_three_namespaces(tmp_path: Path) -> None:
    port = free_port()
    cfg = OpcUaConnection(name="three", endpoint=f"opc.tcp://127.0.0.1:{port}", mode="polling",
                          scan_interval_s=0.1, nodes=[f"nsu={u};i=1001" for u in URIS], browse=["Plant/*"],
                          reconnect_min_s=0.1, reconnect_max_s=0.5, timeout_s=5)

    async def scenario() -> dict[str, str]:
        async with _asyncua_plant(port):
            tags = await _resolved(cfg)
            await collect(tmp_path, [cfg], lambda col: "three" in col.connections
                          and col.connections["three"].counters.values_written >= 3)
            return tags

    tags = asyncio.run(scenario())
    # configured ids: URIs ending in the same word are told apart by the whole URI; the browsed nodes are the same
    # nodes, already named
    want = {"nsu=urn:site:plantA;i=1001": 0.0, "nsu=urn:other:plantA;i=1001": 1.0, "plantB:1001": 2.0}
    assert set(tags) == set(want)
    got = {r.tag: r.value for r in records(tmp_path)}
    assert got == want
