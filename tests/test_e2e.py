"""One path end to end, every piece its own process: simulator -> OPC UA collector -> stream -> publisher ->
mosquitto (mutual TLS) and JSON lines. The publisher is killed with SIGKILL mid-run and restarted: afterwards every
record the collector wrote has arrived at both destinations, in order per tag, duplicates counted and bounded."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devkit.peers import ROOT, Mosquitto, Proc, RecordSubscriber, start, wait_for
from gateway.record import Kind
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore

TAGS = ["Reactor/Pressure", "Reactor/Temperature", "Stripper/Level", "Separator/Level"]


def _component(name: str, cfg: dict[str, Any], run: Path, log: str) -> Proc:
    path = run / f"{log}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return start([sys.executable, f"components/{name}/main.py", "--config", str(path)], run / f"{log}.log",
                 env={"PYTHONPATH": str(ROOT)})


def _status(run: Path, component: str) -> dict[str, Any]:
    try:
        return dict(json.loads((run / "data" / "status" / f"{component}.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_end_to_end_with_publisher_crash(tmp_path: Path, simulator: int, mosquitto: Mosquitto) -> None:
    sub = RecordSubscriber(mosquitto, "factoryedge/#", "e2e-sub")
    received = sub.received

    store_cfg = {"kind": "embedded", "path": str(tmp_path / "data")}
    collector = _component("opcua_collector", {
        "store": store_cfg, "status_interval_s": 0.2,
        "connections": [{"name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{simulator}",
                         "namespace_uri": "urn:factoryedge:tep", "nodes": [f"s={t}" for t in TAGS],
                         "publishing_interval_ms": 100, "flush_interval_s": 0.1}],
    }, tmp_path, "collector")
    publisher_cfg = {
        "store": store_cfg, "status_interval_s": 0.2, "metrics_interval_s": 3600,
        "destinations": [
            {"type": "file", "name": "file", "path": str(tmp_path / "out.jsonl"),
             "route": {"streams": ["factoryedge-opcua"]}},
            {"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": mosquitto.tls_port,
             "client_id": "e2e-pub", "route": {"streams": ["factoryedge-opcua"]},
             "tls": {"ca_file": str(mosquitto.pki.ca), "cert_file": str(mosquitto.pki.client_cert),
                     "key_file": str(mosquitto.pki.client_key)}},
        ],
    }
    publisher = _component("publisher", publisher_cfg, tmp_path, "publisher")
    try:
        def sent(n: int) -> bool:
            d = _status(tmp_path, "factoryedge.Publisher").get("destinations", {})
            return all(d.get(k, {}).get("records_sent", 0) >= n for k in ("file", "broker"))

        wait_for(lambda: sent(40), 60, "records at both destinations")
        publisher.stop(signal.SIGKILL)  # mid-run: the collector keeps writing meanwhile
        killed_ns = time.time_ns()
        wait_for(lambda: _status(tmp_path, "factoryedge.OpcUaCollector")["connections"]["tep"]["values_written"]
                 >= 150, 60, "the collector to write on while the publisher is down")
        publisher = _component("publisher", publisher_cfg, tmp_path, "publisher")
        # The killed publisher's status file (records_sent >= 40) stays until the new process writes its own.
        wait_for(lambda: _status(tmp_path, "factoryedge.Publisher").get("started_ns", 0) > killed_ns and sent(1), 60,
                 "the restarted publisher to deliver")
        assert collector.stop() == 0  # SIGTERM: the collector flushes what it read and exits cleanly

        store = EmbeddedStore(tmp_path / "data")
        end = store.describe("factoryedge-opcua").next_seq
        positions = PositionStore(tmp_path / "data" / "positions")
        wait_for(lambda: all(positions.get(d, "factoryedge-opcua") == end for d in ("file", "broker")), 60,
                 "both destinations to drain the backlog")
        written = RecordReader(store, "factoryedge-opcua", "check", PositionStore(tmp_path / "p")).poll(
            max_messages=100_000, timeout_s=0).records
        ids = [r.id for r in written]
        # the values of the four tags, and the collector's own counters (METRIC records) written at its stop
        assert len(ids) >= 150 and {r.tag for r in written if r.kind == Kind.VALUE} == set(TAGS)

        file_records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        wait_for(lambda: {r["id"] for r in received} >= set(ids), 30, "the MQTT subscriber to get everything")
        for name, got in (("file", file_records), ("mqtt", list(received))):
            got_ids = [g["id"] for g in got]
            assert set(got_ids) >= set(ids), f"{name} lost records"
            duplicates = len(got_ids) - len(set(got_ids))
            assert duplicates <= 2 * 100 * 50, f"{name}: {duplicates} duplicates"  # at most one re-sent read batch
            for tag in TAGS:  # in order per tag (first arrival of each id)
                seen: dict[str, int] = {}
                for g in got:
                    if g["tag"] == tag:
                        seen.setdefault(g["id"], g["seq"])
                order = list(seen.values())
                assert order == sorted(order), f"{name}: {tag} out of order"
    finally:
        sub.stop()
        publisher.stop()
        collector.stop()
