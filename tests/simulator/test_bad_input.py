"""Bad input on every endpoint gets the protocol's own error and leaves the plant and the server as they were;
the revised model's disturbances (21-28) switch like 1-20; OPC UA subscriptions see the plant move."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import OpenOPC
import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from pymodbus.client import ModbusTcpClient

from tests.support.simulator import Served

NS_URI = "urn:factoryedge:tep"


async def _session(url: str, body: Any) -> Any:
    async with Client(url, timeout=10) as client:
        return await body(client, await client.get_namespace_index(NS_URI))


def test_revised_model_disturbances_switch_from_every_endpoint(served: Served) -> None:
    served.sim.reset(5)

    async def opcua(client: Client, ns: int) -> None:
        simulator = client.get_node(f"ns={ns};s=Simulator")
        await simulator.call_method(f"{ns}:SetDisturbance", ua.Variant(21, ua.VariantType.Int32), True)
        await client.get_node(f"ns={ns};s=Disturbances/IDV28").write_value(True)

    asyncio.run(_session(served.opcua_url, opcua))
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        assert not client.write_coils(22, [True, True], device_id=1).isError()  # IDV 23 and 24
    opc = OpenOPC.open_client("127.0.0.1", served.opcda_port)
    opc.connect()
    assert opc.write(("Disturbances.IDV25", True)) == "Success"
    assert served.sim.snapshot.active_idvs == {21, 23, 24, 25, 28}
    assert opc.read("Disturbances.IDV23")[0] is True
    assert opc.read("Simulator.ActiveDisturbances")[0] == "21,23,24,25,28"
    opc.close()
    served.sim.clear_idvs()


def test_opcua_refusals_carry_their_status_codes(served: Served) -> None:
    served.sim.reset(5)

    async def body(client: Client, ns: int) -> None:
        simulator = client.get_node(f"ns={ns};s=Simulator")
        calls = [
            ("SetDisturbance", (ua.Variant(0, ua.VariantType.Int32), True), ua.StatusCodes.BadOutOfRange),
            ("SetDisturbance", (ua.Variant(29, ua.VariantType.Int64), True), ua.StatusCodes.BadOutOfRange),
            ("SetDisturbance", (ua.Variant(6, ua.VariantType.Int32),), ua.StatusCodes.BadArgumentsMissing),
            ("SetDisturbance", (ua.Variant("6"), True), ua.StatusCodes.BadInvalidArgument),
            ("SetDisturbance", (6, True, 1), ua.StatusCodes.BadTooManyArguments),
            ("Reset", (ua.Variant("now"),), ua.StatusCodes.BadInvalidArgument),
            ("ClearDisturbances", (1,), ua.StatusCodes.BadTooManyArguments),
        ]
        for method, args, expected in calls:
            with pytest.raises(UaStatusCodeError) as refused:
                await simulator.call_method(f"{ns}:{method}", *args)
            assert refused.value.code == expected, (method, args)
        for path, value in (("Simulator/SimulatedTime", ua.Variant(1.0, ua.VariantType.Double)),
                            ("Simulator/ActiveDisturbances", ua.Variant("6")),
                            ("Reactor/Pressure/EURange", ua.Variant(1.0, ua.VariantType.Double)),
                            ("Disturbances/IDV29", ua.Variant(True))):  # no such switch: asyncua says denied
            with pytest.raises(UaStatusCodeError) as denied:
                await client.get_node(f"ns={ns};s={path}").write_value(value)
            assert denied.value.code in (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadNotWritable), path
        assert await client.get_node(f"ns={ns};s=Reactor/Pressure").read_value() > 2000  # still serving

    asyncio.run(_session(served.opcua_url, body))
    assert served.sim.snapshot.active_idvs == frozenset() and served.sim.snapshot.seed == 5


def _exchange(port: int, pdu: bytes, unit: int = 1) -> bytes:
    """Send one Modbus TCP request (MBAP + ``pdu``) on a fresh connection; return the reply's PDU."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(bytes([0, 7, 0, 0, 0, len(pdu) + 1, unit]) + pdu)
        reply = raw.recv(260)
    assert reply[:2] == bytes([0, 7]), reply  # the transaction id comes back
    return reply[7:]


@pytest.mark.parametrize(("pdu", "expected"), [
    (bytes([4, 0, 0, 0, 0]), bytes([0x84, 3])),  # count 0: ILLEGAL DATA VALUE
    (bytes([4, 0, 0, 0x07, 0xD0]), bytes([0x84, 3])),  # 2000 registers, over 125
    (bytes([1, 0, 0, 0x07, 0xD1]), bytes([0x81, 3])),  # 2001 coils, over 2000
    (bytes([3, 0]), bytes([0x83, 3])),  # truncated read
    (bytes([4, 0, 80, 0, 10]), bytes([0x84, 2])),  # runs into the gap after XMEAS 41
    (bytes([6, 0, 0, 0, 1]), bytes([0x86, 2])),  # valves are read-only
    (bytes([16, 0, 0, 0, 1, 2, 0, 1]), bytes([0x90, 2])),
    (bytes([5, 0, 3, 0x12, 0x34]), bytes([0x85, 3])),  # a coil is 0xFF00 or 0x0000, nothing else
    (bytes([5, 0, 40, 0xFF, 0]), bytes([0x85, 2])),  # no such coil
    (bytes([15, 0, 0, 0, 8, 5, 0xFF]), bytes([0x8F, 3])),  # byte count does not match
    (bytes([0x63]), bytes([0xE3, 1])),  # no such function: ILLEGAL FUNCTION on 0x63 | 0x80
    (bytes([8, 0, 0, 0x12, 0x34]), bytes([0x88, 1])),  # serial-line diagnostics are not served
])
def test_malformed_modbus_requests_get_the_specified_exception(
    served: Served, pdu: bytes, expected: bytes
) -> None:
    served.sim.reset(5)
    assert _exchange(served.modbus_port, pdu) == expected
    assert served.sim.snapshot.active_idvs == frozenset()  # nothing switched
    assert _exchange(served.modbus_port, bytes([4, 0, 0, 0, 2]))[:2] == bytes([4, 4])  # and the server serves on


def test_modbus_garbage_and_unknown_units_do_not_stop_the_server(served: Served) -> None:
    for junk in (b"\xde\xad\xbe\xef" * 8, bytes([0, 1, 0, 7, 0, 6, 1, 4, 0, 0, 0, 2]), bytes([0, 1, 0, 0, 0, 6, 1])):
        with socket.create_connection(("127.0.0.1", served.modbus_port), timeout=5) as raw:
            raw.sendall(junk)  # not Modbus, a foreign protocol id, a frame cut short: discarded, no answer
            raw.settimeout(0.3)
            with pytest.raises(TimeoutError):
                raw.recv(64)
    assert _exchange(served.modbus_port, bytes([4, 0, 0, 0, 2]), unit=9) == bytes([0x84, 0x0B])
    with ModbusTcpClient("127.0.0.1", port=served.modbus_port) as client:
        assert len(client.read_input_registers(0, count=82, device_id=1).registers) == 82


def test_opcua_subscription_sees_the_plant_move(served: Served) -> None:
    served.sim.reset(5)

    async def body(client: Client, ns: int) -> None:
        seen: dict[str, list[Any]] = {"Reactor/Pressure": [], "Simulator/SimulatedTime": []}

        class Handler:
            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                seen[node.nodeid.Identifier].append(value)

        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_data_change([client.get_node(f"ns={ns};s={path}") for path in seen])
        target = served.sim.advance(30)
        deadline = time.monotonic() + 10
        while target.t_s not in seen["Simulator/SimulatedTime"]:
            assert time.monotonic() < deadline, f"no notification for t={target.t_s}: {seen}"
            await asyncio.sleep(0.02)
        assert seen["Reactor/Pressure"][-1] == target.values[6]
        assert len(set(seen["Reactor/Pressure"])) >= 2  # the initial value, then the new one
        await subscription.delete()

    asyncio.run(_session(served.opcua_url, body))
