"""Modbus decoding and register-map validation without a server: case folders and static config mistakes.

The case folders (tests/cases/modbus) and what each file in them holds: tests/support/modbus_cases.py.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.componentconfig import ModbusCollectorConfig
from gateway.config import validate
from gateway.errors import ConfigError
from gateway.record import Value
from gateway.sources.modbus_codec import ORDERS, Decoder, decode_value, plausible
from gateway.sources.modbus_config import ModbusConnection
from tests.support.modbus_cases import CASES, load_case, same

TABLE_KEYS = {1: "coils", 2: "discrete_inputs", 3: "holding_registers", 4: "input_registers"}


def table(registers: dict[str, Any], unit: int, fc: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for start, values in registers.get(str(unit), {}).get(TABLE_KEYS[fc], {}).items():
        for i, v in enumerate(values):
            out[int(start) + i] = int(v)
    return out


def decode_case(conn: ModbusConnection, registers: dict[str, Any]) -> dict[str, Value]:
    orders = {u.unit_id: u.order for u in conn.units}
    got: dict[str, Value] = {}
    for req in conn.requests():
        cells = table(registers, req.unit, req.fc)
        data = [cells.get(a, 0) for a in range(req.address, req.address + req.count)]
        got.update(Decoder(req, orders[req.unit]).decode(data))
    return got


@pytest.mark.parametrize("folder", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_case(folder: Path) -> None:
    conn, registers, expected = load_case(folder)
    got = decode_case(conn, registers)
    want = expected["values"]
    assert set(got) == set(want)
    wrong = {k: (got[k], v) for k, v in want.items() if not same(got[k], v)}
    assert not wrong, wrong
    if "requests" in expected:
        assert len(conn.requests()) == expected["requests"], [r.label for r in conn.requests()]
    for name, order in expected.get("order_hint", {}).items():
        tag = next(t for u in conn.units for t in u.tags if t.name == name)
        req = next(r for r in conn.requests() for t, _ in r.tags if t.name == name)
        offset = dict((t.name, o) for t, o in req.tags)[name]
        cells = table(registers, req.unit, req.fc)
        regs = [cells.get(req.address + offset + i, 0) for i in range(tag.width)]
        assert not plausible(decode_value(regs, tag.type, conn.units[0].order))
        assert [o for o in ORDERS if plausible(decode_value(regs, tag.type, o))] == [order]


def test_at_least_twelve_cases_cover_every_type_and_order() -> None:
    folders = [p for p in CASES.iterdir() if p.is_dir()]
    assert len(folders) >= 12
    types, orders = set(), set()
    for folder in folders:
        conn, _, _ = load_case(folder)
        for u in conn.units:
            for t in u.tags:
                types.add(t.type)
                orders.add(t.order or u.order)
    assert types == {"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"}
    assert orders == set(ORDERS)


def test_orders_match_an_independent_encoder() -> None:
    from simulator.modbus_server import float_registers

    for order in ORDERS:
        regs = float_registers([2705.25], order)
        assert [decode_value(regs, "float32", o) == 2705.25 for o in ORDERS] == [o == order for o in ORDERS]
    raw = struct.pack(">d", -1.25)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 8, 2)]
    assert decode_value(words[::-1], "float64", "CDAB") == -1.25


def test_a_request_of_mixed_orders_types_and_gaps_decodes_as_each_tag_alone() -> None:
    # the decoder unpacks a request's numbers in one go per byte order (pad bytes for the gaps): each tag must come
    # out as if it were decoded alone, whatever sits around it
    from gateway.sources.modbus_codec import ModbusTag, Request

    rng = [((7 * i + 3) * 2654435761) % 65536 for i in range(40)]
    tags = [ModbusTag(name="f", address=0, type="float32", order="CDAB"),
            ModbusTag(name="u", address=2, type="uint16"),
            ModbusTag(name="d", address=5, type="float64", order="DCBA", scale=0.5, offset=1.0),
            ModbusTag(name="s", address=9, type="string", length=5, order="BADC"),
            ModbusTag(name="b", address=12, type="bool", bit=3),
            ModbusTag(name="i", address=13, type="int32", order="BADC"),
            ModbusTag(name="q", address=20, type="int64"),
            ModbusTag(name="g", address=30, type="float32")]
    request = Request(1, 3, 0, 32, [(t, t.address) for t in tags])
    # and two numbers that overlap (never in a validated map): each still reads its own registers
    overlap = Request(1, 3, 0, 4, [(ModbusTag(name="x", address=0, type="uint32"), 0),
                                   (ModbusTag(name="y", address=1, type="uint16"), 1)])
    for req in (request, overlap):
        got = dict(Decoder(req, "ABCD").decode(rng[: req.count]))
        for tag, offset in req.tags:
            alone = Decoder(Request(1, 3, 0, tag.width, [(tag, 0)]), "ABCD").decode(rng[offset : offset + tag.width])
            assert got[tag.name] == alone[0][1], tag.name
    assert list(dict(Decoder(request, "ABCD").decode(rng[:32]))) == [t.name for t in tags]


def _problems(conn: dict[str, Any]) -> str:
    base = {"name": "plc", "host": "127.0.0.1"}
    with pytest.raises(ConfigError) as info:
        validate(ModbusCollectorConfig, {"connections": [{**base, **conn}]}, origin="test")
    return str(info.value)


def _unit(*tags: dict[str, Any], unit_id: int = 1) -> dict[str, Any]:
    return {"units": [{"unit_id": unit_id, "tags": list(tags)}]}


@pytest.mark.parametrize(("conn", "field", "fix"), [
    (_unit({"name": "a", "address": 0, "type": "float32"}, {"name": "b", "address": 1, "type": "uint16"}),
     "connections.0", "overlap: fix one address"),
    (_unit({"name": "s", "address": 0, "type": "string", "length": 30}, {"name": "x", "address": 10}),
     "connections.0", "'s' (string at 0) and 'x'"),
    (_unit({"name": "a", "address": 65535, "type": "float32"}), "connections.0", "> 65535"),
    (_unit({"name": "a", "address": 70000}), "connections.0", "> 65535"),
    (_unit({"name": "s", "address": 0, "type": "string"}), "connections.0.units.0.tags.0", "add length"),
    (_unit({"name": "c", "fc": 1, "address": 0, "type": "float32"}), "connections.0.units.0.tags.0",
     "use type: bool"),
    (_unit({"name": "b", "fc": 3, "address": 0, "type": "bool"}), "connections.0.units.0.tags.0", "needs `bit"),
    (_unit({"name": "a", "address": 0}, unit_id=300), "connections.0.units.0.unit_id", "outside 0-255"),
    (_unit({"name": "a", "address": 0}, unit_id=-1), "connections.0.units.0.unit_id", "outside 0-255"),
    ({"address_base": 1, **_unit({"name": "a", "address": 0})}, "connections.0", "address_base 1"),
    ({"units": [{"unit_id": 1, "tags": [{"name": "a", "address": 0}]},
                {"unit_id": 2, "tags": [{"name": "a", "address": 0}]}]}, "connections.0", "used twice"),
    (_unit({"name": "a", "address": 0, "type": "string", "length": 4, "scale": 2}),
     "connections.0.units.0.tags.0", "numeric types only"),
    ({"max_registers": 200, **_unit({"name": "a", "address": 0})}, "connections.0.max_registers", "125"),
])
def test_static_mistakes_name_the_field_and_the_fix(conn: dict[str, Any], field: str, fix: str) -> None:
    text = _problems(conn)
    assert f"\n  {field}:" in text or text.startswith(field), text
    assert fix in text, text


def test_bits_of_one_register_may_share_it() -> None:
    conn = ModbusConnection(name="p", host="h", units=[{"unit_id": 1, "tags": [
        {"name": "run", "address": 5, "type": "bool", "bit": 0},
        {"name": "fault", "address": 5, "type": "bool", "bit": 3}]}])
    assert [(r.address, r.count) for r in conn.requests()] == [(5, 1)]


def test_plausibility() -> None:
    assert plausible(2705.25) and plausible(0.0) and plausible(-1e-3) and plausible(7)
    assert not any(plausible(v) for v in (math.nan, math.inf, 1.8e-39, 4.4e-14, 3e12))
