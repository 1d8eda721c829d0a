"""gatewayctl against a healthy local pipeline: simulator -> OPC UA collector -> stream -> publisher -> file + MQTT.

The pipeline (tests/support/cli.py) runs every component as its own process, the way a gateway runs without
Greengrass; gatewayctl finds their configurations through their status files' pids.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.peers import ROOT, Mosquitto, free_port, start_mosquitto, wait_for
from gateway.streams import PositionStore
from tests.support.cli import Pipeline, cli, findings
from tests.support.simulator import start_simulator


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = start_mosquitto(tmp_path_factory.mktemp("cli-mosquitto"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("cli-pipeline")
    sim, port = start_simulator(root)
    p = Pipeline(root, port)
    try:
        p.start("opcua_collector", p.collector_config())
        p.start("publisher", p.publisher_config(broker.port))
        wait_for(lambda: p.destination("broker").get("records_sent", 0) >= 30
                 and p.destination("file").get("records_sent", 0) >= 30, 60, "records at both destinations")
        yield p
    finally:
        p.stop()
        sim.stop()


def test_doctor_passes_on_a_healthy_gateway(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--store", str(pipeline.store), "--json", "doctor")
    checks = findings(out)
    assert code == 0, [c for c in checks.values() if c["ok"] is False]
    # configurations found through the running components' pids, no --config needed
    assert checks["configuration/factoryedge.Publisher"]["ok"] is True
    assert checks["components/factoryedge.OpcUaCollector"]["ok"] is True
    assert checks["source tep (opcua)/tep data"]["ok"] is True
    assert checks["destination broker (mqtt)/broker delivery"]["ok"] is True
    assert checks["clock/clock of tep"]["ok"] is True
    code, text = cli(capsys, "--store", str(pipeline.store), "doctor")
    assert code == 0 and "✔ tep data: last good read" in text and "0 failed" in text


def test_status_shows_rates_depth_and_backlog(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    def status() -> tuple[int, dict[str, Any]]:
        code, out = cli(capsys, "--store", str(pipeline.store), "--json", "status")
        return code, dict(json.loads(out))

    seen: list[tuple[int, dict[str, Any]]] = []

    def moving() -> bool:
        # a rate over one 0.2 s status interval: wait for a status that shows one, then check that same status
        seen.append(status())
        conns = seen[-1][1]["connections"]
        return bool(conns) and (conns[0]["values_per_s"] or 0) > 0

    wait_for(moving, 30, "a values/s figure")
    code, data = seen[-1]
    assert code == 0
    assert {c["component"] for c in data["components"] if c["running"]} == {"factoryedge.OpcUaCollector",
                                                                            "factoryedge.Publisher"}
    conn = data["connections"][0]
    assert conn["name"] == "tep" and conn["values_per_s"] > 0 and conn["last_good_read_age_s"] < 30
    assert {d["name"] for d in data["destinations"]} == {"file", "broker"}
    assert next(s for s in data["streams"] if s["stream"] == "factoryedge-opcua")["messages"] > 0
    code, text = cli(capsys, "--store", str(pipeline.store), "status")
    assert code == 0 and "CONNECTION" in text and "broker" in text


def test_streams_buffer_and_tail(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--store", str(pipeline.store), "--json", "streams")
    assert code == 0 and "factoryedge-opcua" in {r["stream"] for r in json.loads(out)}
    code, out = cli(capsys, "--store", str(pipeline.store), "--json", "buffer")
    rows = {(r["reader"], r["stream"]): r for r in json.loads(out)}
    assert code == 0 and {("file", "factoryedge-opcua"), ("broker", "factoryedge-opcua")} <= set(rows)
    assert all(r["backlog"] is not None and r["lost"] == 0 for r in rows.values())
    code, out = cli(capsys, "tail", "factoryedge-opcua", "--store", str(pipeline.store), "--json", "-n", "5",
                    "--tag", "Reactor/*")
    tags = {json.loads(line)["tag"] for line in out.splitlines()}
    assert code == 0 and tags and tags <= {"Reactor/Pressure", "Reactor/Temperature"}


def test_tail_follow_prints_new_records(pipeline: Pipeline) -> None:
    log = pipeline.root / "tail.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "tail", "factoryedge-opcua", "--follow",
                                 "-n", "0", "--tag", "Stripper/*", "--json", "--store", str(pipeline.store)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(log.read_text().splitlines()) >= 3, 30, "records followed by tail")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
    lines = log.read_text().splitlines()
    assert {json.loads(x)["tag"] for x in lines[:3]} == {"Stripper/Level"}
    assert proc.returncode == 0  # Ctrl-C ends follow mode cleanly


def test_replay_resends_a_range_without_moving_positions(pipeline: Pipeline,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    positions = PositionStore(pipeline.store / "positions")
    before = positions.get("file", "factoryedge-opcua")
    lines_before = len((pipeline.root / "out.jsonl").read_text().splitlines())
    code, out = cli(capsys, "--store", str(pipeline.store), "--json", "replay", "factoryedge-opcua",
                    "--from", "now-1d", "--to", "now", "--destination", "file")
    summary = json.loads(out.splitlines()[-1])["done"]
    assert code == 0 and summary["records_sent"] == summary["records_matched"] > 0
    assert any('"progress"' in line for line in out.splitlines()[:-1])  # --json progress when not a TTY
    assert len((pipeline.root / "out.jsonl").read_text().splitlines()) >= lines_before + summary["records_sent"]
    after = positions.get("file", "factoryedge-opcua")
    assert after is not None and before is not None and after >= before  # the publisher's own position only
    code, _ = cli(capsys, "--store", str(pipeline.store), "replay", "factoryedge-opcua", "--from", "now-1d",
                  "--destination", "nope")
    assert code == 2


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by scripts/setup.sh")
def test_status_watch_in_a_terminal(pipeline: Pipeline) -> None:
    session = f"cli-watch-{free_port()}"
    cmd = (f"cd {ROOT} && {sys.executable} -m gateway.cli.main status --watch --interval 0.3 "
           f"--store {pipeline.store}; echo EXITED $?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        wait_for(lambda: "CONNECTION" in screen() and "broker" in screen(), 30, "the status screen")
        first = screen()
        assert "factoryedge.OpcUaCollector" in first and "q quits" in first
        wait_for(lambda: screen() != first, 30, "the screen to refresh with new figures")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda: "EXITED 0" in screen(), 30, "q to quit status --watch")
        assert "CONNECTION" not in screen()  # the alternate screen is gone: the shell's screen is back
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
