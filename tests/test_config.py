"""Bad configuration: one line per problem naming the field, exit code 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devkit.peers import ROOT
from gateway.componentconfig import OpcUaCollectorConfig, PublisherConfig
from gateway.config import load_file, validate
from gateway.errors import ConfigError


def test_each_problem_is_one_line_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
connections:
  - name: plant
    endpoint: opc.tcp://127.0.0.1:4840
    nodes: [s=A]
    scan_intervall_s: 1
  - name: other
    endpoint: opc.tcp://127.0.0.1:4841
    publishing_interval_ms: fast
  - endpoint: http://wrong
    nodes: [s=B]
""")
    with pytest.raises(ConfigError) as info:
        load_file(OpcUaCollectorConfig, cfg)
    lines = info.value.problems
    text = "\n".join(lines)
    assert "connections.0.scan_intervall_s: Extra inputs are not permitted" in text
    assert "connections.1.publishing_interval_ms" in text and "'fast'" in text
    assert "connections.1.nodes: Field required" in text
    assert "connections.2.name: Field required" in text
    assert "connections.2.endpoint" in text and "opc" in text
    assert all("Fix:" in line for line in lines)
    assert len(lines) == 5


def test_destination_type_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        validate(PublisherConfig, {"destinations": [{"type": "carrier-pigeon", "name": "x"}]}, origin="test")
    assert "destinations.0" in str(info.value) and "carrier-pigeon" in str(info.value)


def test_secrets_are_never_echoed_in_problems() -> None:
    conn = {"name": "a", "endpoint": "opc.tcp://x:1", "nodes": ["i=1"],
            "security": {"pasword": "hunter2-typo", "username": "u"}}
    wrong_type = {"type": "mqtt", "name": "m", "host": "h", "password": ["hunter2-list"]}
    with pytest.raises(ConfigError) as info:
        validate(OpcUaCollectorConfig, {"connections": [conn, {**conn, "name": 5}]}, origin="test")
    text = "\n".join(info.value.problems)
    assert "connections.0.security.pasword: Extra inputs are not permitted. Fix:" in text  # no value at all
    assert "connections.1.name" in text  # the whole connection dict is shown redacted, not raw
    with pytest.raises(ConfigError) as info2:
        validate(PublisherConfig, {"destinations": [wrong_type]}, origin="test")
    text2 = "\n".join(info2.value.problems)
    assert "destinations.0.mqtt.password" in text2
    assert "hunter2" not in text + text2


def test_greengrass_access_control_key_is_not_ours_to_reject() -> None:
    cfg = validate(PublisherConfig, {"accessControl": {"aws.greengrass.ipc.mqttproxy": {}}}, origin="test")
    assert cfg.destinations[0].type == "file"


def test_component_exits_2_and_prints_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"connections": [{"name": "p", "endpoint": "opc.tcp://x:1", "nodes": []}], "colour": 1}')
    run = subprocess.run([sys.executable, "components/opcua_collector/main.py", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    assert "colour: Extra inputs are not permitted" in run.stderr
    assert "connections.0.nodes" in run.stderr
    assert not (tmp_path / "data").exists()


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(PublisherConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("destinations: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(PublisherConfig, bad)
