"""Publisher throughput draining a backlog, and its memory, with the real component process and real peers.

A 100,000-record backlog (1,000 stream messages of 100 tags, the shape a collector writes) is put in an embedded
store first; then ``components/publisher/main.py`` starts with one destination and drains it. The rate is taken
from the destination's committed stream position (polled every 50 ms), from its first commit to the last, so
process start-up is not counted; a record counts once it was accepted and committed.

- ``publisher.kinesis.records_per_s``: to kinesalite (npm, 127.0.0.1), 2 shards, partition key per tag;
- ``publisher.sitewise.values_per_s``: to ``devkit.sitewise_fake`` (its own process), 10 x 10 values a call;
- ``publisher.mqtt.records_per_s``: to mosquitto with QoS 1 and mutual TLS, records batched into 128 KB messages;
- ``publisher.rss_mb``: RSS of one publisher process with all three destinations (mqtt, kinesis, sitewise) at steady
  state, following a live feed of 1,000 values/s (largest sample over 10 s, after 5 s of warm-up);
- ``publisher.rss_mb_after_backlog``: the same process right after draining a 20,000-record backlog to all three
  (Python keeps the high-water mark of a drain).

Peers, publisher and this script share the machine's cores: the figures are lower bounds on a loaded machine.
Run ``python bench/bench_publisher.py`` to print them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.kinesis_peer import TEST_CREDENTIALS, create_stream, start_kinesalite  # noqa: E402
from devkit.peers import Proc, free_port, port_open, start, start_mosquitto, wait_for  # noqa: E402
from gateway.record import make_record  # noqa: E402
from gateway.streams import PositionStore, RecordWriter, StreamSpec  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402

STREAM = "factoryedge-opcua"
TAGS = 100
BACKLOG = 100_000


def _backlog(data: Path, n: int) -> int:
    """Write ``n`` records as messages of one value per tag; return the stream's end position."""
    store = EmbeddedStore(data)
    store.create_stream(StreamSpec(name=STREAM, max_size_bytes=2 * 1024**3))
    writer = RecordWriter(store, STREAM)
    now = time.time_ns()
    for m in range(n // TAGS):
        writer.write([make_record("plc-1", f"/site/line1/tag{t:03d}", float(m * TAGS + t), seq=m * TAGS + t,
                                  source_ts_ns=now - (n - m * TAGS - t) * 1000) for t in range(TAGS)])
    end = store.describe(STREAM).next_seq
    store.close()
    return end


def _publisher(folder: Path, destinations: list[dict[str, Any]]) -> Proc:
    cfg = {"store": {"kind": "embedded", "path": str(folder / "data")}, "status_interval_s": 1.0,
           "metrics_interval_s": 3600, "log_level": "WARNING", "destinations": destinations}
    path = folder / "publisher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return start([sys.executable, "components/publisher/main.py", "--config", str(path)], folder / "publisher.log",
                 env={"PYTHONPATH": str(ROOT), **TEST_CREDENTIALS})


def _drain_rate(folder: Path, name: str, end: int, proc: Proc, records_per_message: int = TAGS) -> float:
    """Records per second between the destination's first commit and its last."""
    positions = PositionStore(folder / "data" / "positions")
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + 600
    while True:
        pos = positions.get(name, STREAM) or 0
        now = time.monotonic()
        if first is None and pos > 0:
            first = (now, pos)
        if pos >= end:
            break
        if now > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"{name} did not drain (position {pos}/{end}): {proc.output()[-2000:]}")
        time.sleep(0.05)  # polling a file position for a measurement, not synchronisation
    assert first is not None
    elapsed = time.monotonic() - first[0]
    return round((end - first[1]) * records_per_message / max(elapsed, 1e-6), 1)


def _destinations(peers: dict[str, Any], route: dict[str, Any]) -> dict[str, dict[str, Any]]:
    mosq = peers["mosquitto"]
    return {
        "kinesis": {"type": "kinesis", "name": "kinesis", "stream_name": "bench", "route": route,
                    "aws": {"endpoint_url": peers["kinesalite"].endpoint_url, "region": "us-east-1",
                            "allow_insecure_endpoint": True}},
        "sitewise": {"type": "sitewise", "name": "sitewise", "route": route,
                     "aws": {"endpoint_url": f"http://127.0.0.1:{peers['sitewise_port']}", "region": "us-east-1",
                             "allow_insecure_endpoint": True}},
        "mqtt": {"type": "mqtt", "name": "mqtt", "host": "127.0.0.1", "port": mosq.tls_port, "route": route,
                 "client_id": "bench-pub", "topic": "bench/{source}/{kind}",
                 "tls": {"ca_file": str(mosq.pki.ca), "cert_file": str(mosq.pki.client_cert),
                         "key_file": str(mosq.pki.client_key)}},
    }


def _measure(root: Path, peers: dict[str, Any], name: str) -> float:
    folder = root / name
    end = _backlog(folder / "data", BACKLOG)
    dest = _destinations(peers, {"streams": [STREAM]})[name]
    proc = _publisher(folder, [dest])
    try:
        return _drain_rate(folder, name, end, proc)
    finally:
        proc.stop()


def _rss(root: Path, peers: dict[str, Any]) -> tuple[float, float]:
    """(steady state under a live feed, right after draining a 20,000-record backlog), both in MiB."""
    folder = root / "rss"
    end = _backlog(folder / "data", 20_000)
    proc = _publisher(folder, list(_destinations(peers, {"streams": [STREAM]}).values()))
    names = ("mqtt", "kinesis", "sitewise")
    try:
        positions = PositionStore(folder / "data" / "positions")
        wait_for(lambda: all((positions.get(d, STREAM) or 0) >= end for d in names)
                 or proc.popen.poll() is not None, 300, "the publisher to drain to all three destinations")
        if proc.popen.poll() is not None:
            raise RuntimeError(proc.output()[-2000:])
        process = psutil.Process(proc.pid)
        after_backlog = process.memory_info().rss / 2**20
    finally:
        proc.stop()
    # Steady state: a fresh publisher following a live collector (1,000 values/s, 100 tags every 100 ms).
    proc = _publisher(folder, list(_destinations(peers, {"streams": [STREAM]}).values()))
    store = EmbeddedStore(folder / "data")
    writer = RecordWriter(store, STREAM)
    try:
        process = psutil.Process(proc.pid)
        samples = []
        for i in range(150):
            now = time.time_ns()
            writer.write([make_record("plc-1", f"/site/line1/tag{t:03d}", float(i), seq=10**6 + i * TAGS + t,
                                      source_ts_ns=now) for t in range(TAGS)])
            if i >= 50:  # after start-up and the first calls of every destination
                samples.append(process.memory_info().rss / 2**20)
            time.sleep(0.1)  # the collector's pace
        if proc.popen.poll() is not None:
            raise RuntimeError(proc.output()[-2000:])
        return round(max(samples), 1), round(after_backlog, 1)
    finally:
        proc.stop()
        store.close()


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-publisher-") as tmp:
        root = Path(tmp)
        mosquitto = start_mosquitto(root / "mosquitto")
        kinesalite = start_kinesalite(root)
        sitewise_port = free_port()
        sitewise = start([sys.executable, "-m", "devkit.sitewise_fake", "--auto-create", "--port",
                          str(sitewise_port)], root / "sitewise.log", env={"PYTHONPATH": str(ROOT)})
        try:
            wait_for(lambda: port_open(sitewise_port), 30, "the SiteWise fake")
            create_stream(kinesalite.endpoint_url, "bench", shards=2)
            peers = {"mosquitto": mosquitto, "kinesalite": kinesalite, "sitewise_port": sitewise_port}
            figures = {
                "publisher.kinesis.records_per_s": _measure(root, peers, "kinesis"),
                "publisher.sitewise.values_per_s": _measure(root, peers, "sitewise"),
                "publisher.mqtt.records_per_s": _measure(root, peers, "mqtt"),
            }
            figures["publisher.rss_mb"], figures["publisher.rss_mb_after_backlog"] = _rss(root, peers)
            return figures
        finally:
            sitewise.stop()
            kinesalite.stop()
            mosquitto.stop()


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key} = {value}")
    print(f"load {os.getloadavg()[0]:.2f}")
