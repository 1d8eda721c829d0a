"""gatewayctl doctor diagnoses what goes wrong on site: wrong node id, destination down with a growing backlog,
full stream, stopped component, invalid configuration, Modbus byte order. Real processes, real peers."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.peers import Proc, free_port, port_open, start, wait_for
from gateway.errors import StreamFull
from gateway.record import make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.base import StrategyOnFull
from gateway.streams.embedded import EmbeddedStore
from tests.support.cli import Pipeline, cli, findings
from tests.support.simulator import start_simulator


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    proc, port = start_simulator(tmp_path)
    yield proc, port
    proc.stop()


def test_wrong_node_id_is_connected_but_no_data(sim: tuple[Proc, int], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = Pipeline(tmp_path, sim[1])
    p.start("opcua_collector", p.collector_config(nodes=["s=Reactor/NoSuchTag"]))
    try:
        wait_for(lambda: p.connection().get("connected") is True and p.connection().get("bad_values_read", 0) > 0, 60,
                 "the collector to connect and mark the node BAD")
        code, out = cli(capsys, "--json", "doctor", "--store", str(p.store))
        checks = findings(out)
        data = checks["source tep (opcua)/tep data"]
        assert code == 1
        assert data["ok"] is False and "connected but no good value" in data["detail"]
        assert "node id" in data["fix"]
        code, text = cli(capsys, "doctor", "--store", str(p.store))
        assert code == 1 and "✘ tep data" in text and "fixes:" in text
    finally:
        p.stop()


def test_destination_down_backlog_grows_then_component_stopped(sim: tuple[Proc, int], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = Pipeline(tmp_path, sim[1])
    dead_port = free_port()  # nothing listens: the broker is down
    p.start("opcua_collector", p.collector_config())
    publisher = p.start("publisher", p.publisher_config(dead_port))
    try:
        # --max-age 4, not 1: the healthy file destination must not look late on a loaded machine (a 1 s stall of
        # the collector or the publisher made its delivery check fail in CI), while the broker's backlog is older
        wait_for(lambda: p.destination("broker").get("oldest_unsent_age_s", 0) > 5
                 and bool(p.destination("broker").get("last_error")), 60, "the broker's backlog to age")
        code, out = cli(capsys, "--json", "doctor", "--store", str(p.store), "--max-age", "4")
        checks = findings(out)
        assert code == 1
        delivery = checks["destination broker (mqtt)/broker delivery"]
        assert delivery["ok"] is False and "failing" in delivery["detail"] and "backlog" in delivery["detail"]
        reach = [c for k, c in checks.items() if k.startswith("destination broker") and c is not delivery]
        assert any(c["ok"] is False and str(dead_port) in c["detail"] for c in reach)
        file_delivery = checks["destination file (file)/file delivery"]
        assert file_delivery["ok"] is True, file_delivery  # one down destination holds no other
        code, _ = cli(capsys, "buffer", "--store", str(p.store), "--max-age", "4")
        assert code == 1  # the broker's backlog is older than allowed

        publisher.stop(signal.SIGKILL)  # a crash: the status file stays behind, its pid is gone
        code, out = cli(capsys, "--json", "doctor", "--store", str(p.store), "--config",
                        str(p.root / "collector.yaml"), "--config", str(p.root / "publisher.yaml"))
        stopped = findings(out)["components/factoryedge.Publisher"]
        assert code == 1 and stopped["ok"] is False and "pid" in stopped["detail"] and "gone" in stopped["detail"]
        code, out = cli(capsys, "--json", "status", "--store", str(p.store))
        assert code == 1
    finally:
        p.stop()


def test_full_stream_and_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = EmbeddedStore(tmp_path / "data")
    store.create_stream(StreamSpec(name="factoryedge-opcua", max_size_bytes=4096, segment_size_bytes=1024,
                                   strategy_on_full=StrategyOnFull.REJECT_NEW_DATA))
    writer = RecordWriter(store, "factoryedge-opcua")
    with pytest.raises(StreamFull):
        for i in range(1000):
            writer.write([make_record("plc", "Reactor/Pressure", float(i), seq=i)])
    bad = tmp_path / "collector.yaml"
    bad.write_text(f"store: {{kind: embedded, path: {tmp_path / 'data'}}}\n"
                   "connections: [{name: tep, endpoint: 'opc.tcp://127.0.0.1:1', nodes: ['s=X'], scan_intervl_s: 1}]\n")
    code, out = cli(capsys, "--json", "doctor", "--config", str(bad))
    checks = findings(out)
    assert code == 1
    full = checks["store/stream factoryedge-opcua"]
    assert full["ok"] is False and "full" in full["detail"] and "max_size_bytes" in full["fix"]
    config = checks["configuration/factoryedge.OpcUaCollector"]
    assert config["ok"] is False and "scan_intervl_s" in config["detail"]
    code, _ = cli(capsys, "config", "check", str(bad))
    assert code == 2


def test_modbus_wrong_byte_order_names_the_right_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator's unit 2 serves floats word-swapped (CDAB); configured as ABCD, doctor says which order fits."""
    port = free_port()
    sim = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "modbus", "--modbus-port",
                 str(port), "--speed", "10", "--status-every", "0"], tmp_path / "simulator.log")
    try:
        wait_for(lambda: port_open(port) or sim.popen.poll() is not None, 60, "the simulator's Modbus endpoint")
        cfg = tmp_path / "modbus_collector.yaml"
        cfg.write_text(yaml.safe_dump({
            "store": {"kind": "embedded", "path": str(tmp_path / "data")},
            "connections": [{"name": "plc", "host": "127.0.0.1", "port": port, "units": [{
                "unit_id": 2, "order": "ABCD", "tags": [
                    {"name": "Reactor/Pressure", "fc": 4, "address": 12, "type": "float32"},
                    {"name": "Reactor/Temperature", "fc": 4, "address": 16, "type": "float32"}]}]}]}))
        code, out = cli(capsys, "--json", "doctor", "--config", str(cfg))
        checks = findings(out)
        order = checks["source plc (modbus)/modbus unit 2 byte order"]
        assert code == 1 and order["ok"] is False and "CDAB" in order["fix"]
    finally:
        sim.stop()


def test_anomaly_groups_in_status_and_doctor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The anomaly component's status file (format in gateway/anomaly/component.py), written here by the test."""
    status = tmp_path / "data" / "status"
    status.mkdir(parents=True)
    (status / "factoryedge.AnomalyDetector.json").write_text(json.dumps({
        "component": "factoryedge.AnomalyDetector", "pid": os.getpid(), "updated_ns": time.time_ns(),
        "problem": None, "errors": {},
        "groups": {"reactor": {"state": "scoring", "score": 1.7, "threshold": 7.9, "alarm": True, "missing_tags": []},
                   "stripper": {"state": "learning", "learning_share": 0.41, "score": None, "threshold": 0,
                                "alarm": False, "missing_tags": []}}}))
    code, out = cli(capsys, "--json", "status", "--store", str(tmp_path / "data"))
    groups = {g["group"]: g for g in json.loads(out)["anomaly"]}
    assert code == 0 and groups["reactor"]["alarm"] is True and groups["reactor"]["score"] == 1.7
    assert groups["stripper"]["state"] == "learning 41%"
    code, text = cli(capsys, "status", "--store", str(tmp_path / "data"))
    assert "ANOMALY GROUP" in text and "ALARM" in text
    code, out = cli(capsys, "--json", "doctor", "--store", str(tmp_path / "data"))
    alarm = findings(out)["anomaly/group reactor"]
    assert alarm["ok"] is None and "ALARM" in alarm["detail"]


def test_store_through_stream_manager(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under Greengrass the streams are in stream manager: doctor and streams connect to it (the real SDK against the
    dev server), and an unreachable stream manager is a failed check with the fix."""
    from tests.support.stream_manager import ServerThread

    server = ServerThread(tmp_path / "sm")
    port = server.start()
    try:
        store = EmbeddedStore(tmp_path / "sm")
        store.create_stream(StreamSpec(name="factoryedge-opcua"))
        RecordWriter(store, "factoryedge-opcua").write([make_record("plc", "Reactor/Pressure", 1.0, seq=1)])
        code, out = cli(capsys, "--json", "--stream-manager", f"127.0.0.1:{port}", "streams")
        assert code == 0 and [r["messages"] for r in json.loads(out) if r["stream"] == "factoryedge-opcua"] == [1]
        code, out = cli(capsys, "--json", "--store", str(tmp_path / "none"), "--stream-manager",
                        f"127.0.0.1:{port}", "doctor", "--timeout", "2")
        checks = findings(out)
        assert checks["store/store"]["ok"] is True and "stream manager" in checks["store/store"]["detail"]
        assert checks["store/stream factoryedge-opcua"]["ok"] is True
    finally:
        server.close()
    code, out = cli(capsys, "--json", "--store", str(tmp_path / "none"), "--stream-manager", f"127.0.0.1:{port}",
                    "doctor", "--timeout", "1")
    unreachable = findings(out)["store/store"]
    assert code == 1 and unreachable["ok"] is False and "StreamManager" in unreachable["fix"]


def test_untrusted_server_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Sign endpoint whose certificate is not in the gateway's trust list: doctor says so and how to trust it."""
    proc, port = start_simulator(tmp_path, extra=["--opcua-security", "sign", "--opcua-cert-dir",
                                                  str(tmp_path / "server-pki")])
    try:
        cfg = tmp_path / "opcua_collector.yaml"
        cfg.write_text(yaml.safe_dump({
            "store": {"kind": "embedded", "path": str(tmp_path / "data")},
            "connections": [{"name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{port}", "nodes": ["ns=2;s=X"],
                             "security": {"policy": "Basic256Sha256", "mode": "Sign",
                                          "pki_dir": str(tmp_path / "gateway-pki")}}]}))
        code, out = cli(capsys, "--json", "doctor", "--config", str(cfg))
        trust = findings(out)["source tep (opcua)/opcua tep: server certificate trusted"]
        assert code == 1 and trust["ok"] is False and "not in the trust list" in trust["detail"]
        assert "gatewayctl opcua trust" in trust["fix"]
    finally:
        proc.stop()


def test_full_stream_fix_matches_its_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A full RejectNewData stream: a reader behind is named; with every backlog 0 nobody is told to get readers
    going (the embedded store frees what every reader committed at the next append); with no reader at all, that
    no reader ever committed is the cause."""
    from typing import Any

    from gateway.streams import PositionStore

    data = tmp_path / "data"
    store = EmbeddedStore(data)
    store.create_stream(StreamSpec(name="factoryedge-opcua", max_size_bytes=4096, segment_size_bytes=1024,
                                   strategy_on_full=StrategyOnFull.REJECT_NEW_DATA))
    writer = RecordWriter(store, "factoryedge-opcua")
    with pytest.raises(StreamFull):
        for i in range(1000):
            writer.write([make_record("plc", "Reactor/Pressure", float(i), seq=i)])
    end = store.describe("factoryedge-opcua").next_seq

    def full_finding() -> dict[str, Any]:
        _, out = cli(capsys, "--json", "doctor", "--store", str(data))
        return findings(out)["store/stream factoryedge-opcua"]

    nobody = full_finding()
    assert nobody["ok"] is False and "no reader" in nobody["fix"] and "get the readers going" not in nobody["fix"]

    positions = PositionStore(data / "positions")
    positions.commit("fast-reader", "factoryedge-opcua", end)
    positions.commit("slow-reader", "factoryedge-opcua", 1)
    behind = full_finding()
    assert behind["ok"] is False and "slow-reader" in behind["fix"] and "fast-reader" not in behind["fix"]

    positions.commit("slow-reader", "factoryedge-opcua", end)
    caught_up = full_finding()
    assert caught_up["ok"] is not False, caught_up  # nothing is wrong now: the next append frees the space
    assert "get the readers going" not in caught_up["fix"] and "next append" in caught_up["detail"] + caught_up["fix"]
    store.close()


def test_full_stream_manager_stream_with_no_backlog_blames_the_time_to_live() -> None:
    """Stream manager deletes nothing that was read: with every backlog 0, the fix is about ttl_s and size."""
    from gateway.cli.doctor import _full_stream

    row = {"stream": "s", "bytes": 4096, "max_bytes": 4096, "rejected": 0}
    caught_up = [{"reader": "file", "committed": 9, "backlog": 0}]
    with_ttl = _full_stream(row, 1.0, caught_up, True, 3600.0)
    assert with_ttl.ok is False and "ttl_s (3600 s)" in with_ttl.fix and "get them going" not in with_ttl.fix
    without = _full_stream(row, 1.0, caught_up, True, None)
    assert "no ttl_s" in without.fix and "OverwriteOldestData" in without.fix
    behind = _full_stream(row, 1.0, [*caught_up, {"reader": "broker", "committed": 2, "backlog": 7}], True, 3600.0)
    assert "broker (backlog 7)" in behind.fix and "file" not in behind.fix.split(";")[0]
