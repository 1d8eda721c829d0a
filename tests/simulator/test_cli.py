"""``python -m simulator`` as a process, driven by the control subcommands gatewayctl forwards to."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.peers import free_port, wait_for
from gateway.cli.main import main as gatewayctl
from simulator import cli


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One simulator process for the module; each test leaves the plant running (reset), whatever it did."""
    ua, mb = free_port(), free_port()
    out = tmp_path_factory.mktemp("sim-cli") / "out.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulator", "--plant", "synthetic", "--speed", "0", "--seed", "4",
             "--idv", "2@1h", "--endpoints", "opcua,modbus", "--opcua-port", str(ua), "--modbus-port", str(mb),
             "--status-every", "0.2"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
        )
    try:
        wait_for(lambda: _port_open(ua) and _port_open(mb), timeout=30, what="simulator ports")
        yield f"opc.tcp://127.0.0.1:{ua}/", out
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_control_subcommands_against_a_running_simulator(
    running: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, out = running
    assert "READY opcua" in wait_for(lambda: out.read_text(), what="ready line")
    assert cli.main(["idv", "6", "on", "--opcua", url]) == 0
    assert cli.main(["--opcua", url, "status"]) == 0
    assert re.search(r"idv=\[(2,)?6\]", capsys.readouterr().out)  # IDV 2 joins at 1 h (schedule)
    wait_for(lambda: cli.main(["status", "--opcua", url]) == 0 and "TRIPPED" in capsys.readouterr().out,
             timeout=60, what="IDV 6 trip at --speed 0")
    assert "TRIPPED" in wait_for(lambda: out.read_text() if "TRIPPED" in out.read_text() else "", what="status line")
    assert cli.main(["reset", "--seed", "8", "--opcua", url]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--opcua", url]) == 0
    line = capsys.readouterr().out
    assert "seed=8" in line and "running" in line


def test_gatewayctl_sim_controls_a_running_simulator(
    running: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path: gatewayctl sim status / idv / clear / reset, human and --json."""
    url, _out = running
    assert gatewayctl(["sim", "idv", "21", "on", "--opcua", url]) == 0  # a revised-model disturbance
    assert capsys.readouterr().out.strip() == "IDV 21 on"
    assert gatewayctl(["sim", "status", "--opcua", url]) == 0
    line = capsys.readouterr().out
    match = re.search(r"t=(\d+):(\d\d):(\d\d) \((\d+) s\) seed=\d+ idv=\[([\d,]+)\] running "
                      r"\| reactor P=([\d.]+) kPa", line)
    assert match, line
    assert "21" in match.group(5).split(",")
    assert 2600 < float(match.group(6)) < 2800
    for label in ("T=", "separator L=", "stripper L=", "product G=", "cooling valve="):
        assert label in line, line
    def json_status() -> dict[str, Any]:
        assert gatewayctl(["--json", "sim", "status", "--opcua", url]) == 0
        return dict(json.loads(capsys.readouterr().out))

    status = json_status()
    assert status["ok"] is True and 21 in status["active_disturbances"]
    assert 2600 < status["values"]["Reactor/Pressure"] < 2800
    # the previous test reset the plant to t=0; on a loaded machine the first step may not be served yet
    status = wait_for(lambda: (s := json_status())["simulated_time_s"] > 0 and s, timeout=30, what="time advancing")
    assert gatewayctl(["sim", "clear", "--opcua", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"command": "clear", "ok": True}
    assert gatewayctl(["sim", "reset", "--seed", "9", "--opcua", url]) == 0
    capsys.readouterr()
    assert gatewayctl(["sim", "status", "--opcua", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["seed"] == 9 and status["shutdown"] is False
    with pytest.raises(SystemExit) as usage:  # an unknown disturbance is bad usage, refused before connecting
        gatewayctl(["sim", "idv", "29", "on", "--opcua", url])
    assert usage.value.code == 2
    assert "1-28" in capsys.readouterr().err


def test_unreachable_simulator_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--opcua", f"opc.tcp://127.0.0.1:{free_port()}/"]) == 1
    assert "unreachable" in capsys.readouterr().err
    assert gatewayctl(["--json", "sim", "idv", "6", "on", "--opcua", f"opc.tcp://127.0.0.1:{free_port()}/"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--idv", "42@1h"], "1-28"), (["--endpoints", "opcua,telnet"], "subset"),
                          (["--speed", "-1"], ">= 0"), (["--warmup", "soon"], "bad duration 'soon'")):
        with pytest.raises(SystemExit) as usage:
            cli.main([*argv, "--plant", "synthetic"])
        assert usage.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as helped:  # options after `sim` reach the simulator's own parser
        gatewayctl(["sim", "--help"])
    assert helped.value.code == 0
    assert "--speed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as helped:
        gatewayctl(["sim", "status", "--help"])
    assert helped.value.code == 0
    assert "key process values" in capsys.readouterr().out

