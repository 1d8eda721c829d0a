"""gatewayctl basics on a real embedded store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.peers import ROOT
from gateway.cli.main import main
from gateway.record import make_record
from gateway.streams import PositionStore, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = EmbeddedStore(tmp_path)
    s.create_stream(StreamSpec(name="factoryedge-opcua"))
    w = RecordWriter(s, "factoryedge-opcua")
    w.write([make_record("plc", "Reactor/Pressure", 2705.0, seq=1), make_record("plc", "Stripper/Level", 50.0, seq=2)])
    return tmp_path


def test_streams_and_tail(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", str(store), "--json", "streams"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["stream"] == "factoryedge-opcua" and rows[0]["messages"] == 1
    assert main(["--store", str(store), "--json", "tail", "factoryedge-opcua", "--tag", "Reactor/*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["tag"] for x in lines] == ["Reactor/Pressure"]
    assert not (store / ".tail" / "gatewayctl-tail").exists()  # tail leaves no reader position behind


def test_status_without_gateway_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", str(tmp_path), "status"]) == 1
    assert "is the gateway running" in capsys.readouterr().out


def test_config_check_and_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "config", "defaults", "factoryedge.Publisher"]) == 0
    defaults = json.loads(capsys.readouterr().out)
    assert defaults["destinations"][0]["type"] == "file"
    good = tmp_path / "p.json"
    good.write_text(json.dumps(defaults))
    assert main(["config", "check", str(good), "--component", "factoryedge.Publisher"]) == 0
    bad = tmp_path / "b.yaml"
    bad.write_text("destinations: [{type: file, name: x, pth: y}]")
    assert main(["config", "check", str(bad), "--component", "factoryedge.Publisher"]) == 2
    assert "destinations.0.file.pth" in capsys.readouterr().err


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli.main", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "gatewayctl tail" in out.stdout


def test_buffer_counts_a_running_reader_from_its_live_position(store: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The anomaly detector commits only with each model save: its status file says how far it really read."""
    s = EmbeddedStore(store)
    w = RecordWriter(s, "factoryedge-opcua")
    for i in range(5):
        w.write([make_record("plc", "Reactor/Pressure", 2700.0 + i, seq=10 + i)])
    next_seq = s.describe("factoryedge-opcua").next_seq
    reader = "factoryedge.AnomalyDetector"
    PositionStore(store / "positions").commit(reader, "factoryedge-opcua", next_seq - 4)
    status = store / "status" / f"{reader}.json"
    status.parent.mkdir()

    def buffer(pid: int) -> tuple[int, dict[str, Any]]:
        status.write_text(json.dumps({"component": reader, "pid": pid,
                                      "inputs": {"factoryedge-opcua": {"position": next_seq}}}))
        code = main(["--store", str(store), "--json", "buffer", "--max-age", "0"])
        rows = json.loads(capsys.readouterr().out)
        return code, next(r for r in rows if r["reader"] == reader)

    code, row = buffer(os.getpid())
    assert code == 0 and row["backlog"] == 0 and row["committed"] == next_seq - 4
    assert f"read to {next_seq}" in row["note"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    code, row = buffer(int(dead.stdout))  # a stopped reader resumes from what it committed
    assert code == 1 and row["backlog"] == 4 and row["note"] == ""
