"""The plugin contract (gateway/plugin.py) for source connections: build() and diagnose() on every connection model,
and validating a configuration still loads no SDK (building one does)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.plugin import Plugin
from gateway.sources.common import ConnectionBase, Source
from gateway.sources.modbus_config import ModbusConnection
from gateway.sources.opcda_config import OpcDaConnection
from gateway.sources.opcua_config import OpcUaConnection

ROOT = Path(__file__).resolve().parents[1]
SDKS = ("asyncua", "pymodbus", "OpenOPC", "Pyro4", "botocore", "paho", "awscrt")

CONNECTIONS: dict[str, tuple[type[ConnectionBase], dict[str, Any], str]] = {
    "opcua": (OpcUaConnection, {"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": ["ns=2;s=A"]}, "OpcUaSource"),
    "modbus": (ModbusConnection, {"host": "127.0.0.1", "units": [{"unit_id": 1, "tags": [
        {"name": "t", "fc": 3, "address": 1, "type": "uint16"}]}]}, "ModbusSource"),
    "opcda": (OpcDaConnection, {"host": "127.0.0.1", "server": "Matrikon.OPC.Simulation.1", "items": ["A.B"],
                                "allow_plaintext": True}, "OpcDaSource"),
}


def _models_satisfy_the_contract(u: OpcUaConnection, m: ModbusConnection, d: OpcDaConnection) -> list[Plugin[Source]]:
    return [u, m, d]  # checked by mypy: each model is a Plugin whose build() gives a Source


@pytest.mark.parametrize("kind", sorted(CONNECTIONS))
def test_every_connection_model_builds_its_source_and_diagnoses(kind: str) -> None:
    model, settings, source = CONNECTIONS[kind]
    conn: Any = model.model_validate({"name": "c", **settings})  # a Plugin[Source] (gateway/plugin.py)
    assert conn.type == kind
    assert type(conn.build()).__name__ == source
    assert inspect.iscoroutinefunction(conn.diagnose)


def test_validating_every_plugin_loads_no_sdk_and_building_one_does() -> None:
    """Components, deployment validation and gatewayctl read every model; only a component that runs one loads it."""
    code = f"""
import sys
from gateway.componentconfig import (ModbusCollectorConfig, OpcDaCollectorConfig, OpcUaCollectorConfig,
                                     PublisherConfig)
from tests.test_plugins import CONNECTIONS
OpcUaCollectorConfig.model_validate({{"connections": [{{"name": "u", **CONNECTIONS["opcua"][1]}}]}})
ModbusCollectorConfig.model_validate({{"connections": [{{"name": "m", **CONNECTIONS["modbus"][1]}}]}})
OpcDaCollectorConfig.model_validate({{"connections": [{{"name": "d", **CONNECTIONS["opcda"][1]}}]}})
cfg = PublisherConfig.model_validate({{"destinations": [
    {{"type": "file", "name": "f"}}, {{"type": "mqtt", "name": "m", "host": "127.0.0.1"}},
    {{"type": "iotcore", "name": "i"}}, {{"type": "sitewise", "name": "s"}},
    {{"type": "kinesis", "name": "k", "stream_name": "s"}}]}})
print(sorted(m for m in {SDKS!r} if m in sys.modules))
[d for d in cfg.destinations if d.type == "mqtt"][0].build()
print(sorted(m for m in {SDKS!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    validated, built = out.stdout.splitlines()
    assert validated == "[]"
    assert built == "['paho']"
