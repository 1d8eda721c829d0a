"""Browse patterns select the variables that carry process values (issue 16 item 5): paths below Objects (the
leading ``Objects/`` optional), ``**`` zero or more levels anywhere, hierarchical references but not HasProperty
unless ``browse_properties``, never the Server object's diagnostics through ``**``; a pattern matching nothing says
what was searched. And ``gatewayctl opcua read`` / ``browse`` show a non-Good status code's name and number (item 4).

Against node-opcua (tests/peers/opcua_server.js --names: nested folders Plant/Line1/Tank1, an AnalogItem with
EURange and EngineeringUnits) and an asyncua server started here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asyncua import Server, ua

from devkit.peers import free_port
from gateway.cli.main import main as gatewayctl
from gateway.errors import SourceError
from gateway.record import Quality
from gateway.sources.opcua_browse import browse_patterns
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_session import connect, disconnect
from tests.support.opcua_peer import NodeOpcUa, collect, conn, records, start_node_opcua

TANK = "Plant/Line1/Tank1"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeOpcUa]:
    server = start_node_opcua(tmp_path_factory.mktemp("patterns"), names=True, variables=2, rate=10)
    yield server
    server.stop()


async def _paths(url: str, patterns: list[str], properties: bool = False) -> list[str]:
    cfg = OpcUaConnection(name="b", endpoint=url, browse=patterns, timeout_s=5)
    client = await connect(cfg)
    try:
        return [path for path, _ in await browse_patterns(client, patterns, properties=properties)]
    finally:
        await disconnect(client)


def _paths_of(url: str, *patterns: str, properties: bool = False) -> list[str]:
    return asyncio.run(_paths(url, list(patterns), properties))


def _error(url: str, pattern: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        _paths_of(url, pattern)
    return info.value


def test_trailing_double_star_takes_every_variable_below(plant: NodeOpcUa) -> None:
    want = [f"{TANK}/Level", f"{TANK}/Temperature", f"{TANK}/Temperature"]  # Temperature: one per namespace
    assert sorted(_paths_of(plant.url, "Objects/Plant/**")) == want
    assert sorted(_paths_of(plant.url, "Plant/**")) == want  # Objects/ is optional
    assert sorted(_paths_of(plant.url, "/Root/Objects/Plant/**")) == want


def test_double_star_is_zero_or_more_levels_anywhere(plant: NodeOpcUa) -> None:
    assert sorted(_paths_of(plant.url, "**/Level")) == [f"{TANK}/Level", "Tank/Level"]
    assert sorted(_paths_of(plant.url, "Plant/**/Line1/Tank1/Level")) == [f"{TANK}/Level"]  # zero levels
    assert sorted(_paths_of(plant.url, "Plant/**/Level")) == [f"{TANK}/Level"]  # two levels


def test_properties_are_not_tags_unless_asked(plant: NodeOpcUa) -> None:
    every = _paths_of(plant.url, "**/*")
    names = {p.rsplit("/", 1)[-1] for p in every}
    assert not names & {"EURange", "EngineeringUnits", "InstrumentRange"}, sorted(names)
    assert {f"{TANK}/Level", "Reactor/Pressure", "Tank/Flow", "Bulk/V1"} <= set(every)
    assert not [p for p in every if p.startswith("Server/")]  # '**' keeps out of the Server object's diagnostics
    assert "Server/ServerStatus/State" in _paths_of(plant.url, "Server/ServerStatus/State")  # named: taken
    with_props = _paths_of(plant.url, f"{TANK}/**", properties=True)
    assert {f"{TANK}/Level/EURange", f"{TANK}/Level/EngineeringUnits"} <= set(with_props)


def test_an_empty_match_says_what_was_searched_and_the_right_form(plant: NodeOpcUa) -> None:
    err = _error(plant.url, "Plant/Line2/*")
    text = f"{err.message} {err.fix}"
    assert "searched from Objects (i=85)" in text and "nodes visited" in text, text
    assert "segment 2 'Line2'" in text and "below Plant" in text and "Line1" in text, text
    assert "**/Level" in err.fix and "below Objects" in err.fix
    err = _error(plant.url, f"{TANK}/Level/EURange")
    assert "EURange is a property: set browse_properties: true" in err.message, err.message
    err = _error(plant.url, "Plant/Line1")
    assert "are not variables (1, e.g. Plant/Line1)" in err.message and "/**" in err.message, err.message


def test_a_collector_on_plant_double_star_reads_values_and_no_property(tmp_path: Path, plant: NodeOpcUa) -> None:
    c = conn(plant, nodes=[], browse=["Objects/Plant/**"])
    asyncio.run(collect(tmp_path, [c], lambda col: "peer" in col.connections
                        and col.connections["peer"].counters.values_written >= 30))
    recs = records(tmp_path)
    assert {r.tag for r in recs} == {f"{TANK}/Level", f"test:{TANK}/Temperature", f"line2:{TANK}/Temperature"}
    assert all(r.quality == Quality.GOOD for r in recs)


# --- asyncua: two namespaces, nested objects, a property and a bad status ---------------------------------------

URI_A, URI_B = "urn:site:lineA", "urn:site:lineB"


@asynccontextmanager
async def _asyncua(port: int) -> AsyncIterator[dict[str, str]]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    a, b = await server.register_namespace(URI_A), await server.register_namespace(URI_B)
    area = await server.nodes.objects.add_object(f"ns={a};s=Area", f"{a}:Area")
    pump = await area.add_object(f"ns={a};s=Area/Pump", f"{a}:Pump")
    speed = await pump.add_variable(f"ns={a};s=Area/Pump/Speed", f"{a}:Speed", 1450.0)
    await speed.add_property(f"ns={a};s=Area/Pump/Speed/EURange", "EURange", ua.Range(0.0, 3000.0))
    await pump.add_variable(f"ns={b};s=Area/Pump/Speed", f"{b}:Speed", 2900.0)
    failed = await pump.add_variable(f"ns={a};s=Area/Pump/Vibration", f"{a}:Vibration", 0.0)
    await server.start()
    bad = ua.DataValue(ua.Variant(0.0, ua.VariantType.Double),
                       StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure)))
    await failed.write_value(bad)
    try:
        yield {"pump": f"ns={a};s=Area/Pump", "vibration": f"ns={a};s=Area/Pump/Vibration"}
    finally:
        await server.stop()


def test_asyncua_patterns_two_namespaces_and_properties(tmp_path: Path) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with _asyncua(port):
            return (await _paths(url, ["Area/**"]), await _paths(url, ["**/Speed/*"], properties=True),
                    await _paths(url, ["**"]))

    plain, props, everything = asyncio.run(scenario())
    assert plain == ["Area/Pump/Speed", "Area/Pump/Speed", "Area/Pump/Vibration"]
    assert props == ["Area/Pump/Speed/EURange"]
    assert everything == plain  # '**' alone: every process variable, no Server diagnostics, no property


def test_cli_read_and_browse_show_status_name_and_number(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    code = ua.StatusCodes.BadSensorFailure

    async def scenario() -> list[tuple[int, str]]:
        out = []
        async with _asyncua(port) as ids:
            for argv in (["opcua", "read", url, ids["vibration"]], ["opcua", "read", url, ids["vibration"], "--json"],
                         ["opcua", "browse", url, ids["pump"]], ["opcua", "browse", url, ids["pump"], "--json"]):
                # gatewayctl runs its own event loop: run it beside the server's
                rc = await asyncio.to_thread(gatewayctl, argv)
                out.append((rc, capsys.readouterr().out))
        return out

    (rc_read, read), (_, read_json), (rc_browse, browse), (_, browse_json) = asyncio.run(scenario())
    assert rc_read == 1 and f"BadSensorFailure (0x{code:08X})" in read, read
    [row] = json.loads(read_json)
    assert row["status"] == "BadSensorFailure" and row["status_code"] == code and not row["good"]
    assert rc_browse == 0 and f"BadSensorFailure (0x{code:08X})" in browse, browse
    rows = {r["browse_name"]: r for r in json.loads(browse_json)}
    assert rows["Vibration"]["status_code"] == code and rows["Speed"]["status"] == "Good"
