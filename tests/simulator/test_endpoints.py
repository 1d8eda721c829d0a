"""Every endpoint read and driven with the real client libraries: asyncua, pymodbus, OpenOPC's open_client."""

from __future__ import annotations

import asyncio
import struct
from datetime import datetime
from typing import Any

import OpenOPC
import Pyro4
import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from pymodbus.client import ModbusTcpClient

from simulator.modbus_server import decode32
from simulator.tags import PROCESS_TAGS
from tests.support.simulator import Served

NS_URI = "urn:factoryedge:tep"
A_FEED = 0  # XMEAS 1, lost under IDV 6


def _fresh(served: Served, steps: int = 30) -> None:
    served.sim.reset(5)
    served.sim.advance(steps)


def _until_shutdown(served: Served) -> None:
    served.sim.set_idv(6, True)
    for _ in range(40):
        if served.sim.advance(1800).shutdown:
            return
    raise AssertionError("IDV 6 did not trip the plant within 20 h")


# ---------------------------------------------------------------- OPC UA
async def _ua_session(url: str, body: Any) -> Any:
    async with Client(url, timeout=10) as client:
        ns = await client.get_namespace_index(NS_URI)
        return await body(client, ns)


async def _ua_wait_time(client: Client, ns: int, t_s: float) -> None:
    node = client.get_node(f"ns={ns};s=Simulator/SimulatedTime")
    for _ in range(500):
        if await node.read_value() == t_s:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"OPC UA SimulatedTime never reached {t_s}")


def test_opcua_values_units_and_timestamps_match_the_plant(served: Served) -> None:
    _fresh(served)
    snap = served.sim.snapshot

    async def body(client: Client, ns: int) -> None:
        await _ua_wait_time(client, ns, snap.t_s)
        nodes = [client.get_node(f"ns={ns};s={tag.path}") for tag in PROCESS_TAGS]
        values = await client.read_data_values(nodes) if hasattr(client, "read_data_values") else [
            await n.read_data_value() for n in nodes]
        for tag, dv, expected, stamp in zip(PROCESS_TAGS, values, snap.values, snap.stamps, strict=True):
            assert dv.StatusCode.is_good(), tag.path
            assert dv.Value.Value == expected, tag.path
            assert dv.SourceTimestamp.replace(tzinfo=None) == stamp.replace(tzinfo=None), tag.path
        pressure = client.get_node(f"ns={ns};s=Reactor/Pressure")
        units = await client.get_node(f"ns={ns};s=Reactor/Pressure/EngineeringUnits").read_value()
        assert units.DisplayName.Text == "kPa"
        eu_range = await client.get_node(f"ns={ns};s=Reactor/Pressure/EURange").read_value()
        assert eu_range.Low < await pressure.read_value() < eu_range.High
        valve = await client.get_node(f"ns={ns};s=Reactor/CoolingWaterValve/EngineeringUnits").read_value()
        assert valve.DisplayName.Text == "%"
        folder = await client.nodes.objects.get_child(f"{ns}:Reactor")
        children = {(await c.read_browse_name()).Name for c in await folder.get_children()}
        assert {"Pressure", "Level", "Temperature", "CoolingWaterValve"} <= children

    asyncio.run(_ua_session(served.opcua_url, body))


def test_opcua_disturbance_switch_has_its_effect(served: Served) -> None:
    _fresh(served)

    async def switch(client: Client, ns: int) -> None:
        await client.get_node(f"ns={ns};s=Disturbances/IDV06").write_value(True)

    asyncio.run(_ua_session(served.opcua_url, switch))
    assert served.sim.snapshot.active_idvs == {6}
    snap = served.sim.advance(900)

    async def check(client: Client, ns: int) -> None:
        await _ua_wait_time(client, ns, snap.t_s)
        assert await client.get_node(f"ns={ns};s=Feeds/AFeed").read_value() < 0.05
        assert await client.get_node(f"ns={ns};s=Simulator/ActiveDisturbances").read_value() == "6"
        simulator = client.get_node(f"ns={ns};s=Simulator")
        await simulator.call_method(f"{ns}:SetDisturbance", ua.Variant(6, ua.VariantType.Int32), False)

    asyncio.run(_ua_session(served.opcua_url, check))
    assert served.sim.snapshot.active_idvs == frozenset()


def test_opcua_bad_input_gets_status_codes(served: Served) -> None:
    _fresh(served)

    async def body(client: Client, ns: int) -> None:
        with pytest.raises(UaStatusCodeError) as denied:
            await client.get_node(f"ns={ns};s=Reactor/Pressure").write_value(1.0)
        assert denied.value.code in (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadNotWritable)
        simulator = client.get_node(f"ns={ns};s=Simulator")
        with pytest.raises(UaStatusCodeError) as unknown:
            await simulator.call_method(f"{ns}:SetDisturbance", ua.Variant(99, ua.VariantType.Int32), True)
        assert unknown.value.code == ua.StatusCodes.BadOutOfRange
        with pytest.raises(UaStatusCodeError) as mismatch:
            await client.get_node(f"ns={ns};s=Disturbances/IDV01").write_value(ua.Variant("yes"))
        assert mismatch.value.code == ua.StatusCodes.BadTypeMismatch
        with pytest.raises(UaStatusCodeError) as missing:
            await client.get_node(f"ns={ns};s=Reactor/NoSuchTag").read_value()
        assert missing.value.code == ua.StatusCodes.BadNodeIdUnknown

    asyncio.run(_ua_session(served.opcua_url, body))
    assert served.sim.snapshot.active_idvs == frozenset()


def test_trip_is_bad_everywhere_and_reset_recovers(served: Served) -> None:
    _fresh(served)
    _until_shutdown(served)
    snap = served.sim.snapshot

    async def tripped(client: Client, ns: int) -> None:
        await _ua_wait_time(client, ns, snap.t_s)
        assert await client.get_node(f"ns={ns};s=Simulator/Shutdown").read_value() is True
        assert "Stripper" in await client.get_node(f"ns={ns};s=Simulator/ShutdownReason").read_value()
        dv = await client.get_node(f"ns={ns};s=Reactor/Pressure").read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None and dv.StatusCode.value == ua.StatusCodes.BadOutOfService
        await client.get_node(f"ns={ns};s=Simulator").call_method(f"{ns}:Reset", ua.Variant(-1, ua.VariantType.Int64))

    opc = OpenOPC.open_client("127.0.0.1", served.opcda_port)
    opc.connect("FactoryEdge.TEP.1")
    assert opc.read("Reactor.Pressure")[1] == "Bad"
    assert opc.read("Simulator.ShutdownReason")[0] == snap.shutdown_reason
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as mb:
        assert mb.read_discrete_inputs(0, count=1, device_id=1).bits[0] is True
    asyncio.run(_ua_session(served.opcua_url, tripped))
    assert not served.sim.snapshot.shutdown and served.sim.snapshot.t_s == 0
    assert opc.read("Reactor.Pressure")[1] == "Good"
    opc.close()


# ---------------------------------------------------------------- Modbus
def _floats(registers: list[int], order: str) -> list[float]:
    return [struct.unpack(">f", decode32(registers[i : i + 2], order))[0] for i in range(0, len(registers), 2)]


def _f32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def test_modbus_values_in_both_orders_match_the_plant(served: Served) -> None:
    _fresh(served)
    snap = served.sim.snapshot
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        for unit, order in ((1, "ABCD"), (2, "DCBA")):
            xmeas = _floats(client.read_input_registers(0, count=82, device_id=unit).registers, order)
            xmv = _floats(client.read_holding_registers(0, count=24, device_id=unit).registers, order)
            assert xmeas + xmv == [_f32(v) for v in snap.values]
            status = client.read_input_registers(100, count=7, device_id=unit).registers
            assert struct.unpack(">I", decode32(status[0:2], order))[0] == int(snap.t_s)
            assert struct.unpack(">I", decode32(status[2:4], order))[0] == 5
        assert 2600 < xmeas[6] < 2800  # reactor pressure in kPa


def test_modbus_coil_switches_a_disturbance(served: Served) -> None:
    _fresh(served)
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        assert not client.write_coil(5, True, device_id=2).isError()  # coil 5 = IDV 6
        assert served.sim.snapshot.active_idvs == {6}
        served.sim.advance(900)
        assert _floats(client.read_input_registers(0, count=2, device_id=1).registers, "ABCD")[0] < 0.05
        assert client.read_coils(0, count=28, device_id=1).bits[5] is True
        status = client.read_input_registers(104, count=2, device_id=1).registers
        assert struct.unpack(">I", decode32(status, "ABCD"))[0] == 1 << 5
        assert not client.write_coil(32, True, device_id=1).isError()  # reset coil
    assert served.sim.snapshot.t_s == 0 and not served.sim.snapshot.active_idvs


def test_modbus_bad_requests_get_exceptions_and_the_server_survives(served: Served) -> None:
    _fresh(served)
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        for response in (
            client.write_register(0, 1, device_id=1),  # valves are read-only
            client.write_coil(40, True, device_id=1),  # no such disturbance coil
            client.read_input_registers(80, count=10, device_id=1),  # runs into the gap after XMEAS 41
            client.read_holding_registers(24, count=1, device_id=1),
        ):
            assert response.isError() and response.exception_code == 2, response
        unknown_unit = client.read_input_registers(0, count=2, device_id=9)
        assert unknown_unit.isError() and unknown_unit.exception_code == 0x0B
    # malformed frames: tests/simulator/test_bad_input.py
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        assert not client.read_input_registers(0, count=82, device_id=1).isError()
    assert served.sim.snapshot.active_idvs == frozenset()


# ---------------------------------------------------------------- OPC DA
def test_opcda_values_qualities_and_timestamps_match_the_plant(served: Served) -> None:
    _fresh(served)
    snap = served.sim.snapshot
    Pyro4.config.COMMTIMEOUT = 10
    opc = OpenOPC.open_client("127.0.0.1", served.opcda_port)
    opc.connect("FactoryEdge.TEP.1", "localhost")
    items = [tag.path.replace("/", ".") for tag in PROCESS_TAGS]
    rows = opc.read(items, group="all")
    for (item, value, quality, stamp), expected, expected_stamp in zip(rows, snap.values, snap.stamps, strict=True):
        assert quality == "Good", item
        assert value == expected, item
        assert datetime.fromisoformat(stamp) == expected_stamp, item
    assert [r[0] for r in opc.read(group="all")] == items  # the named group is reused
    assert opc.properties("Reactor.Pressure", id=100) == "kPa"
    assert "Reactor" in opc.list()
    assert "Reactor.Pressure" in opc.list("Reactor")
    assert opc.servers() == ["FactoryEdge.TEP.1"] and opc.ping() is True
    assert ("State", "Running") in [tuple(i) for i in opc.info()]
    opc.close()


def test_opcda_write_switches_a_disturbance_and_bad_items_are_errors(served: Served) -> None:
    _fresh(served)
    opc = OpenOPC.open_client("127.0.0.1", served.opcda_port)
    opc.connect()
    assert opc.write(("Disturbances.IDV06", True)) == "Success"
    assert served.sim.snapshot.active_idvs == {6}
    served.sim.advance(900)
    assert opc.read("Feeds.AFeed")[0] < 0.05
    assert tuple(opc.read("Reactor.NoSuchTag")) == (None, "Error", None)
    assert opc.write(("Reactor.Pressure", 1.0)) == "Error"
    assert [tuple(r) for r in opc.write([("Disturbances.IDV06", False), ("No.Such", 1)])] == [
        ("Disturbances.IDV06", "Success"), ("No.Such", "Error")]
    assert opc.write(("Disturbances.IDV01", "maybe")) == "Error"
    assert served.sim.snapshot.active_idvs == frozenset()
    opc.close()
