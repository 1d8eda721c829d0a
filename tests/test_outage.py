"""Outage: the site link is blackholed, then reset, while records keep being written; the publisher is killed with
SIGKILL in the middle and restarted. Afterwards every record written has arrived at mosquitto (mutual TLS, QoS 1)
and at kinesalite, in order per tag, with duplicates (by record id) counted and bounded.

The issue asks for an outage of minutes. Here each phase lasts until the publisher has demonstrably failed and
retried through it (the counters in its status file say so), which takes seconds because the timeouts are scaled
down by configuration (MQTT acknowledgement 2 s, keepalive 5 s, Kinesis read timeout 2 s, retries up to 1 s). A
longer outage only makes the backlog bigger: the stream is the buffer and nothing else changes.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from devkit.faultproxy import FaultProxy
from devkit.kinesis_peer import TEST_CREDENTIALS, Kinesalite, create_stream, gateway_records
from devkit.peers import ROOT, Mosquitto, Proc, RecordSubscriber, start, wait_for
from gateway.record import make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

TAGS = ["Reactor/Pressure", "Reactor/Temperature", "Stripper/Level", "Separator/Level"]
STREAM = "factoryedge-opcua"
BATCH_MESSAGES = 20
DESTINATIONS = ("broker", "kinesis")


class _Writer(threading.Thread):
    """A collector stand-in: one message of one value per tag every 20 ms until stopped."""

    def __init__(self, store: EmbeddedStore) -> None:
        super().__init__(name="outage-writer", daemon=True)
        self.writer = RecordWriter(store, STREAM)
        self.halt = threading.Event()
        self.seq = 0

    def run(self) -> None:
        while not self.halt.wait(0.02):  # the pace of a collector, not synchronisation
            now = time.time_ns()
            batch = [make_record("plc", tag, float(self.seq + i), seq=self.seq + i, source_ts_ns=now)
                     for i, tag in enumerate(TAGS)]
            self.writer.write(batch)
            self.seq += len(batch)


def _status(data: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data / "status" / "factoryedge.Publisher.json").read_text()))
    except (OSError, ValueError):
        return {}


def _counter(data: Path, name: str, key: str) -> int:
    return int(_status(data).get("destinations", {}).get(name, {}).get(key, 0))


def _start_publisher(cfg_path: Path, run: Path) -> Proc:
    return start([sys.executable, "components/publisher/main.py", "--config", str(cfg_path)], run / "publisher.log",
                 env={"PYTHONPATH": str(ROOT), **TEST_CREDENTIALS})


def test_outage_blackhole_reset_and_kill9_lose_nothing(
    tmp_path: Path, mosquitto: Mosquitto, kinesalite: Kinesalite
) -> None:
    data = tmp_path / "data"
    store = EmbeddedStore(data)
    store.create_stream(StreamSpec(name=STREAM))
    create_stream(kinesalite.endpoint_url, "outage", shards=2)
    mqtt_link = FaultProxy(mosquitto.tls_port).start()
    kinesis_link = FaultProxy(kinesalite.port).start()

    sub = RecordSubscriber(mosquitto, "outage/#", "outage-sub")
    received = sub.received

    retry = {"retry_min_s": 0.2, "retry_max_s": 1.0, "batch_messages": BATCH_MESSAGES, "route": {"streams": [STREAM]}}
    cfg = {
        "store": {"kind": "embedded", "path": str(data)}, "status_interval_s": 0.2, "metrics_interval_s": 3600,
        "destinations": [
            {"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": mqtt_link.port, "client_id": "outage-pub",
             "topic": "outage/{source}/{group}", "ack_timeout_s": 2, "keepalive_s": 5, **retry,
             "tls": {"ca_file": str(mosquitto.pki.ca), "cert_file": str(mosquitto.pki.client_cert),
                     "key_file": str(mosquitto.pki.client_key)}},
            {"type": "kinesis", "name": "kinesis", "stream_name": "outage", **retry,
             "aws": {"endpoint_url": f"http://127.0.0.1:{kinesis_link.port}", "allow_insecure_endpoint": True,
                     "region": "us-east-1",
                     "connect_timeout_s": 2, "read_timeout_s": 2}},
        ],
    }
    cfg_path = tmp_path / "publisher.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    writer = _Writer(store)
    writer.start()
    publisher = _start_publisher(cfg_path, tmp_path)
    try:
        wait_for(lambda: all(_counter(data, d, "records_sent") >= 100 for d in DESTINATIONS), 60,
                 f"records at both destinations\n{publisher.output()}")

        # Cable cut: nothing moves, connections stay open. Both destinations fail and retry.
        mqtt_link.blackhole()
        kinesis_link.blackhole()
        before = {d: _counter(data, d, "send_retries") for d in DESTINATIONS}
        wait_for(lambda: all(_counter(data, d, "send_retries") >= before[d] + 2 for d in DESTINATIONS), 60,
                 "both destinations to notice the blackhole and retry")
        assert _counter(data, "broker", "backlog_messages") > 0

        # The publisher dies mid-outage (power cut, OOM killer) and is restarted.
        publisher.stop(signal.SIGKILL)
        killed_ns = time.time_ns()
        publisher = _start_publisher(cfg_path, tmp_path)
        # started_ns is the publisher's own (the runtime writes the pid into the old file before that).
        wait_for(lambda: _status(data).get("started_ns", 0) > killed_ns, 60, "the restarted publisher's status")

        # A firewall forgets the flows: every connection is reset, new ones too.
        mqtt_link.reset()
        kinesis_link.reset()
        wait_for(lambda: all(_counter(data, d, "send_retries") >= 2 for d in DESTINATIONS), 60,
                 "both destinations to retry through the resets")

        mqtt_link.pass_through()
        kinesis_link.pass_through()
        wait_for(lambda: all(_counter(data, d, "records_sent") >= 100 for d in DESTINATIONS), 60,
                 "delivery to resume after the outage")
        writer.halt.set()
        writer.join(5)
        end = store.describe(STREAM).next_seq
        positions = PositionStore(data / "positions")
        wait_for(lambda: all(positions.get(d, STREAM) == end for d in DESTINATIONS), 60,
                 "both destinations to drain the backlog")
    finally:
        writer.halt.set()
        publisher.stop()
        sub.stop()
        mqtt_link.stop()
        kinesis_link.stop()

    written = RecordReader(store, STREAM, "check", PositionStore(tmp_path / "p")).poll(
        max_messages=1_000_000, timeout_s=0).records
    ids = {r.id for r in written}
    assert len(ids) == writer.seq >= 400
    wait_for(lambda: {r["id"] for r in received} >= ids, 30, "the MQTT subscriber to get everything")
    bound = 10 * BATCH_MESSAGES * len(TAGS)  # a few re-sent read batches per destination, never the whole backlog
    for name, got in (("mqtt", list(received)), ("kinesis", gateway_records(kinesalite.endpoint_url, "outage"))):
        got_ids = [g["id"] for g in got]
        assert set(got_ids) >= ids, f"{name} lost {len(ids - set(got_ids))} records"
        duplicates = len(got_ids) - len(set(got_ids))
        print(f"{name}: {len(ids)} written, {len(got_ids)} received, {duplicates} duplicates")
        assert duplicates <= bound, f"{name}: {duplicates} duplicates"
        for tag in TAGS:  # in order per tag (first arrival of each id)
            first: dict[str, int] = {}
            for g in got:
                if g["tag"] == tag:
                    first.setdefault(g["id"], g["seq"])
            assert list(first.values()) == sorted(first.values()), f"{name}: {tag} out of order"
