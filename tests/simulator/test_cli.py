"""``python -m simulator`` as a process, driven by the control subcommands gatewayctl forwards to."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import cli
from tests.simulator.conftest import free_port, wait_for


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ua, mb = free_port(), free_port()
    out = tmp_path / "out.txt"
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
    assert cli.main(["idv", "99", "on", "--opcua", url]) == 1
    assert "BadOutOfRange" in capsys.readouterr().err
    assert cli.main(["reset", "--seed", "8", "--opcua", url]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--opcua", url]) == 0
    line = capsys.readouterr().out
    assert "seed=8" in line and "running" in line


def test_unreachable_simulator_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--opcua", f"opc.tcp://127.0.0.1:{free_port()}/"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        cli.main(["--idv", "42@1h", "--plant", "synthetic"])
    with pytest.raises(SystemExit):
        cli.main(["--endpoints", "opcua,telnet", "--plant", "synthetic"])
