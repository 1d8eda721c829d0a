"""Engineering units and ranges (issue #16, item 7): an OPC UA variable's EURange, EngineeringUnits, InstrumentRange
and Description are read once per session and written as one META record per tag, before its values, and the
latest per tag is in the status file and ``gatewayctl status --json``; a node without them gets no META record and
no error. Against node-opcua's AnalogItem (tests/peers/opcua_server.js) and an asyncua server built here.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua

from devkit.peers import free_port
from gateway.cli.main import main as gatewayctl
from gateway.collector import Collector
from gateway.record import Kind, Quality, Record
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.opcua_peer import NodeOpcUa, conn, records

CEFACT = "http://www.opcfoundation.org/UA/units/un/cefact"  # the namespace of UNECE unit codes (Part 8)
# what tests/peers/opcua_server.js gives Objects/Analog/Temperature (node-opcua's standardUnits.degree_celsius)
ANALOG = {"unit": "°C", "unit_id": 4408652, "unit_uri": CEFACT, "eu_range": [0.0, 100.0],
          "instrument_range": [-50.0, 150.0], "description": "Analog temperature"}
URI = "urn:factoryedge:meta"
STEAM, ODD = "plant/Boiler/Steam", "plant/Boiler/Odd"  # published names (tag_prefix plant/)


def _unece(code: str) -> int:
    """The UnitId of a UNECE common code (Part 8: its characters' bytes, big-endian)."""
    return int.from_bytes(code.encode("ascii"), "big")


async def _run(tmp: Path, conns: list[OpcUaConnection], scenario: Callable[[Collector], Any]) -> Collector:
    """A collector whose status folder is the store's, as a component's is (so gatewayctl --store finds it), run
    while ``scenario(collector)`` is awaited."""
    store = EmbeddedStore(tmp / "store")
    col = Collector("test", store, StreamSpec(name="opcua"), OpcUaSource, status_dir=tmp / "store" / "status")
    stop = asyncio.Event()
    task = asyncio.create_task(col.run(conns, stop))
    try:
        await scenario(col)
        assert not task.done(), task.exception()
    finally:
        stop.set()
        await task
        store.close()
    return col


async def _until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _status(tmp: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert gatewayctl(["--json", "--store", str(tmp / "store"), "status"]) in (0, 1)  # 1: the collector stopped
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return {c["name"]: c for c in data["connections"]}


def _metas(recs: list[Record], source: str | None = None) -> list[Record]:
    return [r for r in recs if r.kind == Kind.META and (source is None or r.source == source)]


def test_node_opcua_analog_item_gets_one_meta_record_with_its_unit_and_ranges(
        tmp_path: Path, node_opcua_shared: NodeOpcUa, capsys: pytest.CaptureFixture[str]) -> None:
    c = conn(node_opcua_shared, nodes=["s=Analog/Temperature", "s=Reactor/Pressure"])

    async def scenario(col: Collector) -> None:
        await _until(lambda: "peer" in col.connections and col.connections["peer"].counters.values_written >= 10,
                     "values")

    col = asyncio.run(_run(tmp_path, [c], scenario))
    recs = records(tmp_path)
    [meta] = _metas(recs)
    assert (meta.source, meta.tag, meta.quality, meta.value) == ("peer", "Analog/Temperature", Quality.GOOD, ANALOG)
    first_value = next(i for i, r in enumerate(recs) if r.tag == "Analog/Temperature" and r.kind == Kind.VALUE)
    assert recs.index(meta) < first_value, "the unit must come before the values it describes"
    counters = col.connections["peer"].counters
    assert counters.read_errors == 0 and counters.last_error == ""  # Reactor/Pressure has no properties: no error
    assert counters.values_written == sum(r.kind == Kind.VALUE for r in recs)  # a META record is not a value
    written = json.loads((tmp_path / "store" / "status" / "test.json").read_text())
    assert written["connections"]["peer"]["tags"] == {"Analog/Temperature": ANALOG}
    assert _status(tmp_path, capsys)["peer"]["tags"] == {"Analog/Temperature": ANALOG}


def _type(ident: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(ident))


async def _asyncua_server(port: int, unit: str, code: str) -> Server:
    """Boiler/Steam with EURange, EngineeringUnits (``unit``, UNECE ``code``) and a Description; Boiler/Odd with a
    range that is not finite and a unit without a code or name; Boiler/Plain with no properties."""
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(URI)
    boiler = await server.nodes.objects.add_object(idx, "Boiler")
    steam = await boiler.add_variable(f"ns={idx};s=Boiler/Steam", "Steam", 12.5)
    await steam.add_property(f"ns={idx};s=Boiler/Steam/EURange", "EURange", ua.Range(Low=0.0, High=40.0),
                             datatype=_type(ua.ObjectIds.Range))
    units = ua.EUInformation(NamespaceUri=CEFACT, UnitId=_unece(code), DisplayName=ua.LocalizedText(unit),
                             Description=ua.LocalizedText(unit))
    await steam.add_property(f"ns={idx};s=Boiler/Steam/EngineeringUnits", "EngineeringUnits", units,
                             datatype=_type(ua.ObjectIds.EUInformation))
    await steam.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText("Steam drum"))))
    odd = await boiler.add_variable(f"ns={idx};s=Boiler/Odd", "Odd", 1.0)
    await odd.add_property(f"ns={idx};s=Boiler/Odd/EURange", "EURange", ua.Range(Low=math.nan, High=1.0),
                           datatype=_type(ua.ObjectIds.Range))
    await odd.add_property(f"ns={idx};s=Boiler/Odd/EngineeringUnits", "EngineeringUnits",
                           ua.EUInformation(UnitId=-1), datatype=_type(ua.ObjectIds.EUInformation))
    await boiler.add_variable(f"ns={idx};s=Boiler/Plain", "Plain", 3.0)
    await server.start()
    return server


def test_asyncua_properties_once_per_session_and_the_latest_in_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    common: dict[str, Any] = {"endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": URI,
                              "nodes": ["s=Boiler/Steam", "s=Boiler/Odd", "s=Boiler/Plain"],
                              "publishing_interval_ms": 50, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                              "timeout_s": 3, "keepalive_s": 1, "flush_interval_s": 0.05}
    plant = OpcUaConnection(name="plant", tag_prefix="plant/", **common)
    quiet = OpcUaConnection(name="quiet", metadata=False, **common)
    sessions: list[Server] = []

    async def scenario(col: Collector) -> None:
        def metas() -> int:
            return len(col.connections["plant"].emitter.meta) if "plant" in col.connections else 0

        await _until(lambda: metas() == 2 and col.connections["quiet"].counters.values_written >= 3, "first session")
        await sessions[0].stop()  # a server restart: a new session, which reads the (now changed) unit again
        await _until(lambda: not col.connections["plant"].counters.connected, "the link loss")
        sessions.append(await _asyncua_server(port, "kPa", "KPA"))
        await _until(lambda: col.connections["plant"].emitter.meta.get(STEAM, {}).get("unit") == "kPa",
                     "second session")

    async def main() -> Collector:
        sessions.append(await _asyncua_server(port, "bar", "BAR"))
        try:
            return await _run(tmp_path, [plant, quiet], scenario)
        finally:
            await sessions[-1].stop()

    col = asyncio.run(main())
    steam = {"eu_range": [0.0, 40.0], "unit_uri": CEFACT, "description": "Steam drum"}
    first = {**steam, "unit": "bar", "unit_id": _unece("BAR")}
    second = {**steam, "unit": "kPa", "unit_id": _unece("KPA")}
    # asyncua names every node's Description after it; the range with a NaN end is left out, the record stays GOOD
    odd = {"unit_id": -1, "description": "Odd"}
    recs = records(tmp_path)
    plant_metas = _metas(recs, "plant")
    assert [r.value for r in plant_metas if r.tag == STEAM] == [first, second]  # one per session, as it was then
    assert [r.value for r in plant_metas if r.tag == ODD] == [odd, odd]
    assert all(r.quality == Quality.GOOD for r in plant_metas)
    assert not [r for r in plant_metas if r.tag == "plant/Boiler/Plain"]
    assert not _metas(recs, "quiet")  # metadata: false
    assert col.connections["plant"].emitter.meta == {STEAM: second, ODD: odd}
    shown = _status(tmp_path, capsys)
    assert shown["plant"]["tags"] == {STEAM: second, ODD: odd}  # the latest, by published tag
    assert shown["quiet"]["tags"] == {}
