"""gatewayctl doctor diagnoses what goes wrong on site: wrong node id, destination down with a growing backlog,
full stream, stopped component, invalid configuration. Real processes, real peers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dev.peers import Proc, free_port, wait_for
from gateway.errors import StreamFull
from gateway.record import make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.base import StrategyOnFull
from gateway.streams.embedded import EmbeddedStore
from tests.conftest import start_simulator
from tests.test_cli_pipeline import Pipeline, cli, findings


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
        wait_for(lambda: p.connection().get("connected") is True and p.connection().get("values_bad", 0) > 0, 60,
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
        wait_for(lambda: p.destination("broker").get("oldest_unsent_age_s", 0) > 1.5
                 and bool(p.destination("broker").get("last_error")), 60, "the broker's backlog to age")
        code, out = cli(capsys, "--json", "doctor", "--store", str(p.store), "--max-age", "1")
        checks = findings(out)
        assert code == 1
        delivery = checks["destination broker (mqtt)/broker delivery"]
        assert delivery["ok"] is False and "failing" in delivery["detail"] and "backlog" in delivery["detail"]
        reach = [c for k, c in checks.items() if k.startswith("destination broker") and c is not delivery]
        assert any(c["ok"] is False and str(dead_port) in c["detail"] for c in reach)
        assert checks["destination file (file)/file delivery"]["ok"] is True  # one down destination holds no other
        code, _ = cli(capsys, "buffer", "--store", str(p.store), "--max-age", "1")
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
