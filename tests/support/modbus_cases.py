"""The Modbus case folders (tests/cases/modbus): each holds a connection's register map, raw table contents and the
values the collector must decode from them. Read by the codec tests (no server) and the libmodbus tests.

Each folder holds ``map.yaml`` (the connection's register map), ``registers.json`` (raw table contents per unit id:
``{"1": {"holding_registers": {"0": [..]}, "coils": ...}}``) and ``expected.json`` (``values`` per tag; NaN for a
value that must go BAD; optional ``requests``: reads per scan; optional ``order_hint``: the order diagnostics must
propose for a tag read in the wrong order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from gateway.record import Value
from gateway.sources.modbus_config import ModbusConnection

CASES = Path(__file__).parents[1] / "cases" / "modbus"


def load_case(folder: Path) -> tuple[ModbusConnection, dict[str, Any], dict[str, Any]]:
    """(the connection of ``map.yaml``, the raw tables of ``registers.json``, ``expected.json``) of one case folder."""
    conn = ModbusConnection(name=folder.name, host="127.0.0.1", **yaml.safe_load((folder / "map.yaml").read_text()))
    return conn, json.loads((folder / "registers.json").read_text()), json.loads((folder / "expected.json").read_text())


def same(got: Value, want: Any) -> bool:
    """Whether a decoded value is the expected one: NaN matches NaN, floats to 1e-12, the rest by type and value."""
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, int | float) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-12)
    return type(got) is type(want) and got == want
