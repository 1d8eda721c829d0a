"""gatewayctl config check | defaults | explain, the deployed configuration over IPC, and the small parsers doctor
relies on (time arguments, greengrass-cli output, SNTP)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.ipc_server import IpcServer
from devkit.peers import ROOT
from gateway.cli.checks import clock_vs_ntp, ntp_offset
from gateway.cli.common import parse_time
from gateway.cli.doctor import parse_component_list
from gateway.errors import ConfigError
from tests.support.cli import cli, cli_err

GOOD_PUBLISHER = {"destinations": [{"type": "file", "name": "deployed", "path": "out/x.jsonl"}]}


def test_explain_walks_lists_and_union_members(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--json", "config", "explain", "factoryedge.Publisher", "destinations.mqtt.port")
    info = json.loads(out)
    assert code == 0 and info["type"] == "int" and info["default"] == 1883
    assert ">= 1" in info["constraints"] and "<= 65535" in info["constraints"] and "port" in info["description"]
    code, out = cli(capsys, "config", "explain", "factoryedge.OpcUaCollector.connections.mode")
    assert code == 0 and "subscription" in out and "polling" in out and "default: \"subscription\"" in out
    code, out = cli(capsys, "--json", "config", "explain", "factoryedge.OpcUaCollector", "stream.strategy_on_full")
    assert json.loads(out)["allowed"] == ["RejectNewData", "OverwriteOldestData"]


def test_explain_unknown_key_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli_err(capsys, "config", "explain", "factoryedge.Publisher", "destinations.mqtt.colour")
    assert code == 2 and "destinations.mqtt.colour: no such key" in err and "port" in err


def test_check_recognises_each_file_and_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub = tmp_path / "site-a.yaml"  # the name says nothing: the content decides
    pub.write_text(json.dumps(GOOD_PUBLISHER))
    col = tmp_path / "opcua_collector.yaml"
    col.write_text("connections: [{name: plc, endpoint: 'opc.tcp://10.0.0.5:4840', nodes: ['ns=2;s=X']}]\n")
    code, out = cli(capsys, "--json", "config", "check", str(pub), str(col))
    results = {r["component"]: r for r in json.loads(out)}
    assert code == 0 and results["factoryedge.Publisher"]["valid"] and results["factoryedge.OpcUaCollector"]["valid"]
    col.write_text("connections: [{name: plc, endpoint: 'http://10.0.0.5', nodes: ['ns=2;s=X']}]\n")
    code, out = cli(capsys, "--json", "--config-dir", str(tmp_path), "config", "check")
    bad = {r["component"]: r for r in json.loads(out)}["factoryedge.OpcUaCollector"]
    assert code == 2 and not bad["valid"] and any("endpoint" in p for p in bad["problems"])
    empty = tmp_path / "x.yaml"
    empty.write_text("{}\n")
    code, err = cli_err(capsys, "config", "check", str(empty))
    assert code == 2 and "cannot tell which component" in err
    code, _ = cli(capsys, "config", "check", f"factoryedge.Publisher={empty}")
    assert code == 0


def test_check_names_the_component_it_chose_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    by_content = tmp_path / "site-a.yaml"
    by_content.write_text(json.dumps(GOOD_PUBLISHER))
    by_name = tmp_path / "opcua_collector.yaml"
    by_name.write_text("connections: [{name: plc, endpoint: 'opc.tcp://10.0.0.5:4840', nodes: ['ns=2;s=X']}]\n")
    code, out = cli(capsys, "config", "check", str(by_content), str(by_name))
    assert code == 0
    assert "checked as factoryedge.Publisher (the only model it fits)" in out
    assert "checked as factoryedge.OpcUaCollector (from the file name)" in out
    closest = tmp_path / "plant.yaml"  # a Modbus collector with one mistake: no model fits, one fits best
    closest.write_text("connections: [{name: plc, host: 10.0.0.5, port: 0, units: [{unit_id: 1, tags: "
                       "[{name: t, address: 0}]}]}]\n")
    code, err = cli_err(capsys, "config", "check", str(closest))
    assert code == 2 and "checked as factoryedge.ModbusCollector (the model it fits best" in err
    assert "--component" in err
    empty = tmp_path / "x.yaml"
    empty.write_text("{}\n")
    code, err = cli_err(capsys, "config", "check", str(empty))
    assert code == 2 and "--component" in err
    assert all(name in err for name in ("factoryedge.Publisher", "factoryedge.OpcUaCollector",
                                        "factoryedge.ModbusCollector", "factoryedge.AnomalyDetector"))
    code, out = cli(capsys, "config", "check", "--component", "factoryedge.Publisher", str(empty))
    assert code == 0 and "checked as factoryedge.Publisher (given)" in out


@pytest.fixture
def nucleus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IpcServer]:
    loop = asyncio.new_event_loop()
    server = IpcServer(str(tmp_path / "ipc.socket"), {"tok-cli": "factoryedge.Publisher"})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", server.socket_path)
    monkeypatch.setenv("SVCUID", "tok-cli")

    async def configure() -> None:
        server.set_configuration("factoryedge.Publisher", {**GOOD_PUBLISHER, "accessControl": {}})
        server.set_configuration("factoryedge.OpcUaCollector", {"connections": [{"name": "x", "colour": "red"}]})

    asyncio.run_coroutine_threadsafe(configure(), loop).result(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_check_deployed_reads_every_component_over_ipc(nucleus: IpcServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--json", "config", "check", "--deployed")
    results = {r["component"]: r for r in json.loads(out)}
    assert code == 2  # the collector's deployed configuration is invalid
    assert results["factoryedge.Publisher"]["valid"] and results["factoryedge.Publisher"]["origin"] == "deployment"
    assert any("colour" in p for p in results["factoryedge.OpcUaCollector"]["problems"])


def test_defaults_are_valid_configurations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--json", "config", "defaults", "factoryedge.Publisher")
    path = tmp_path / "publisher.json"
    path.write_text(out)
    assert code == 0 and cli(capsys, "config", "check", str(path))[0] == 0
    assert cli(capsys, "config", "defaults", "NoSuchComponent")[0] == 2
    for name in ("factoryedge.OpcUaCollector", "factoryedge.ModbusCollector", "factoryedge.OpcDaCollector",
                 "factoryedge.AnomalyDetector"):  # as YAML, the way the README has a newcomer start
        code, out = cli(capsys, "config", "defaults", name)
        path = tmp_path / "defaults.yaml"
        path.write_text(out)
        assert code == 0 and cli(capsys, "config", "check", "--component", name, str(path))[0] == 0, out


def test_time_arguments() -> None:
    now = 1_800_000_000 * 10**9
    assert parse_time("now", now) == now
    assert parse_time("now-2h", now) == now - 7200 * 10**9
    assert parse_time("-10m", now) == now - 600 * 10**9
    assert parse_time("1700000000") == 1_700_000_000 * 10**9
    assert parse_time("2026-11-22T05:00:00Z") == parse_time("2026-11-22T06:00:00+01:00")
    with pytest.raises(ConfigError, match="not understood"):
        parse_time("yesterday")


def test_greengrass_cli_component_list() -> None:
    text = ("Components currently running in Greengrass:\nComponent Name: factoryedge.Publisher\n    Version: 0.1.0\n"
            "    State: RUNNING\n    Configuration: {\"destinations\":[]}\nComponent Name: factoryedge.OpcUaCollector\n"
            "    Version: 0.1.0\n    State: BROKEN\n")
    assert parse_component_list(text) == {"factoryedge.Publisher": "RUNNING", "factoryedge.OpcUaCollector": "BROKEN"}


def test_ntp_offset_against_a_time_server_that_runs_ahead() -> None:
    """SNTP on the wire: a responder whose clock is 20 minutes ahead makes the gateway clock 20 minutes behind."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve() -> None:
        _, addr = sock.recvfrom(512)
        t = time.time() + 1200 + 2_208_988_800
        reply = bytearray(48)
        reply[0] = 0x24  # version 4, mode 4 (server)
        reply[40:48] = struct.pack("!II", int(t), int((t % 1) * 2**32))
        sock.sendto(bytes(reply), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert abs(ntp_offset(f"127.0.0.1:{port}", 5) + 1200) < 5
    finally:
        thread.join(5)
        sock.close()
    unanswered = clock_vs_ntp(f"127.0.0.1:{port}", 0.2)  # nobody listens any more
    assert unanswered.ok is None and "did not answer" in unanswered.detail


def test_gatewayctl_starts_without_the_protocol_sdks() -> None:
    """`gatewayctl status` must not import asyncua, pymodbus or boto3: start time is most of its run time."""
    code = ("import sys; from gateway.cli.main import build_parser; build_parser(['status']); "
            "print(sorted(m for m in ('asyncua', 'pymodbus', 'boto3', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli.main", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for command in ("doctor", "status", "streams", "tail", "buffer", "replay", "config", "sim", "anomaly"):
        assert f"    {command}" in out.stdout
