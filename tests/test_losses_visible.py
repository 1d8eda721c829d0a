"""Losses and stopped components are visible until someone acts (issue 13, items C and 10).

Messages a reader never got (overwritten before it read them) are counted once, durably, beside its position: they
survive a restart of the reader (the publisher) and show in ``gatewayctl status``, ``buffer`` and ``doctor`` until
``gatewayctl buffer --ack-losses``. A status older than three of its component's status intervals is STALE in
``status`` (text and JSON) and fails doctor's data check instead of passing on old counters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import main
from gateway.record import make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

KB = 1024


def overwritten_store(root: Path) -> int:
    """A stream that overwrote its oldest messages before the reader "dest" (configured, never committed) read
    them; the reader polls once, as a publisher that then restarts. Returns how many it lost."""
    store = EmbeddedStore(root)
    store.create_stream(StreamSpec(name="s", max_size_bytes=8 * KB, segment_size_bytes=2 * KB))
    writer = RecordWriter(store, "s")
    for i in range(200):
        writer.write([make_record("src", "t", float(i), seq=i)])
    lost = store.describe("s").oldest_seq
    assert lost > 0
    reader = RecordReader(store, "s", "dest", PositionStore(root / "positions"))
    assert reader.poll(max_messages=1000, timeout_s=0).lost == lost
    store.close()
    return lost


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_reader_losses_survive_a_restart_and_show_until_acknowledged(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lost = overwritten_store(tmp_path)
    # the publisher restarts and reads the same gap again (it never committed past it): counted once
    store = EmbeddedStore(tmp_path)
    again = RecordReader(store, "s", "dest", PositionStore(tmp_path / "positions"))
    again.poll(max_messages=1000, timeout_s=0)
    again.commit()  # and now it moved past the gap: the loss must still show
    store.close()
    [row] = PositionStore(tmp_path / "positions").losses()
    assert row["unacknowledged"] == {"messages_lost": lost}

    store_arg = ["--store", str(tmp_path)]
    code, out = run_cli(capsys, *store_arg, "--json", "status")
    assert [(r["owner"], r["stream"], r["unacknowledged"]) for r in json.loads(out)["losses"]] == \
        [("dest", "s", {"messages_lost": lost})]
    code, out = run_cli(capsys, *store_arg, "status")
    assert "UNACKNOWLEDGED LOSSES" in out and f"messages_lost {lost}" in out
    code, out = run_cli(capsys, *store_arg, "buffer")
    assert code == 1 and f"messages_lost {lost}" in out and "--ack-losses" in out
    code, out = run_cli(capsys, *store_arg, "--json", "doctor")
    [finding] = [c for c in json.loads(out)["checks"] if c["section"] == "losses"]
    assert finding["ok"] is False and str(lost) in finding["detail"] and "--ack-losses" in finding["fix"]

    code, out = run_cli(capsys, *store_arg, "buffer", "--ack-losses")
    assert code == 0 and "acknowledged" in out
    assert PositionStore(tmp_path / "positions").losses()[0]["unacknowledged"] == {}
    code, out = run_cli(capsys, *store_arg, "--json", "status")
    assert json.loads(out)["losses"] == []
    code, out = run_cli(capsys, *store_arg, "buffer")
    assert code == 0 and "messages_lost" not in out
    code, out = run_cli(capsys, *store_arg, "--json", "doctor")
    assert not [c for c in json.loads(out)["checks"] if c["section"] == "losses" and c["ok"] is False]


def test_collector_losses_persist_and_a_new_loss_after_an_acknowledgement_shows_again(tmp_path: Path) -> None:
    positions = PositionStore(tmp_path / "positions")
    positions.add_losses("factoryedge.ModbusCollector", "factoryedge-modbus", values_dropped=8800)
    positions.add_losses("factoryedge.ModbusCollector", "factoryedge-modbus", gaps=1, gap_s=12.5)
    [row] = PositionStore(tmp_path / "positions").losses()
    assert row["unacknowledged"] == {"values_dropped": 8800, "gaps": 1, "gap_s": 12.5}
    assert [r["owner"] for r in positions.acknowledge()] == ["factoryedge.ModbusCollector"]
    positions.add_losses("factoryedge.ModbusCollector", "factoryedge-modbus", values_dropped=3)
    [row] = positions.losses()
    assert row["unacknowledged"] == {"values_dropped": 3} and row["counts"]["values_dropped"] == 8803


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_status(store: Path, *, pid: int, age_s: float) -> None:
    now = time.time_ns()
    status: dict[str, Any] = {
        "component": "factoryedge.ModbusCollector", "pid": pid, "started_ns": now - 60_000_000_000,
        "updated_ns": now - int(age_s * 1e9), "status_interval_s": 0.5, "stream": "factoryedge-modbus",
        "connections": {"plc": {"connected": True, "values_read": 5000, "bad_values_read": 0, "read_errors": 0,
                                "connect_retries": 0, "last_good_read_ns": now - int(age_s * 1e9), "last_error": "",
                                "values_per_s": 250.0}},
    }
    (store / "status").mkdir(parents=True, exist_ok=True)
    (store / "status" / "factoryedge.ModbusCollector.json").write_text(json.dumps(status))


@pytest.mark.parametrize("case", ["pid gone", "pid alive, status old"])
def test_a_stale_status_is_stale_everywhere(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 3 s old with a 0.5 s interval: six intervals late, yet well inside the old fixed 30 s limit
    write_status(tmp_path, pid=dead_pid() if case == "pid gone" else os.getpid(), age_s=3.0)
    code, out = run_cli(capsys, "--store", str(tmp_path), "--json", "status")
    data = json.loads(out)
    [comp] = data["components"]
    [conn] = data["connections"]
    assert comp["stale"] is True and comp["running"] is False and code == 1
    assert conn["stale"] is True and conn["values_per_s"] is None
    code, out = run_cli(capsys, "--store", str(tmp_path), "status")
    line = next(ln for ln in out.splitlines() if ln.startswith("plc"))
    assert "STALE" in line and "yes" not in line and "250" not in line
    code, out = run_cli(capsys, "--store", str(tmp_path), "--json", "doctor")
    [data_check] = [c for c in json.loads(out)["checks"] if c["check"] == "plc data"]
    assert data_check["ok"] is False and "STALE" in data_check["detail"]


def test_a_fresh_status_is_not_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, pid=os.getpid(), age_s=0.2)
    _, out = run_cli(capsys, "--store", str(tmp_path), "--json", "status")
    data = json.loads(out)
    assert data["components"][0]["stale"] is False and data["connections"][0]["stale"] is False
    assert data["connections"][0]["values_per_s"] == 250.0


def test_anomaly_status_is_stale_after_three_of_its_intervals() -> None:
    from gateway.anomaly.livestatus import problems

    now = time.time_ns()
    status = {"updated_ns": now - 3_000_000_000, "status_interval_s": 0.5, "groups": {}}
    assert any(p.startswith("STALE") for p in problems(status, now))
    assert problems({**status, "updated_ns": now - 200_000_000}, now) == []
