"""Latency through the whole pipeline: a value read from a PLC to its arrival at an MQTT subscriber.

The real processes, as on a gateway without Greengrass: the libmodbus test server (tests/peers/modbus_server.c with
``-m``, so every read changes the values), the Modbus collector component (``TAGS`` float32 tags every
``SCAN_S``: 1,000 values/s), the publisher component with one MQTT destination (QoS 1, mutual TLS, like IoT Core)
and mosquitto, all sharing one embedded store folder; a paho subscriber on the same machine takes each record's
arrival time. A Modbus value has no timestamp of its own: its source time is when the collector read it, so a
record's latency is ``arrival - sourceTs`` on one clock: collector flush, stream append, publisher wake-up,
encoding, TCP and the broker. The scan's own age of a value (up to ``SCAN_S``) is not in it.

- ``pipeline.latency_p50_ms`` / ``pipeline.latency_p99_ms``: over the values whose source time is inside the window;
- ``pipeline.values_per_s``: those values per second (1,000 offered: fewer means the pipeline lost throughput);
- ``pipeline.append_p50_ms`` / ``pipeline.append_p99_ms``: source time to the stream message's ingest time (read
  back from the store afterwards; ms resolution, stamped as the append begins, before its write and fsync): the
  collector's wait before writing. The rest (the append itself, the publisher's wake-up, read, encoding, send, its
  position commit and the broker) is the latency minus this.

Run ``python bench/bench_pipeline_latency.py`` to print the figures and the load.
"""

from __future__ import annotations

import calendar
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import modbus_server, write_config  # noqa: E402
from devkit.peers import Mosquitto, Proc, start, start_mosquitto, wait_for  # noqa: E402
from gateway.codec import decode_batch  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402

TAGS = 100
SCAN_S = 0.1  # TAGS values per scan: 1,000 values/s
WARMUP_S = 4.0
WINDOW_S = 12.0
STREAM = "factoryedge-modbus"
TOPIC = "bench/latency"


def _collector(folder: Path, port: int) -> Proc:
    conn = {"name": "plc", "host": "127.0.0.1", "port": port, "scan_interval_s": SCAN_S, "timeout_s": 2,
            "units": [{"unit_id": 1, "tags": [{"name": f"tag{i:03d}", "address": 2 * i, "type": "float32"}
                                               for i in range(TAGS)]}]}
    config = write_config(folder, STREAM, [conn])
    return start([sys.executable, "-m", "components.modbus_collector.main", "--config", str(config)],
                 folder / "collector.log")


def _publisher(folder: Path, mosq: Mosquitto) -> Proc:
    dest = {"type": "mqtt", "name": "mqtt", "host": "127.0.0.1", "port": mosq.tls_port, "client_id": "bench-pub",
            "topic": TOPIC, "route": {"streams": [STREAM], "kinds": ["value"]},
            "tls": {"ca_file": str(mosq.pki.ca), "cert_file": str(mosq.pki.client_cert),
                    "key_file": str(mosq.pki.client_key)}}
    cfg = {"store": {"kind": "embedded", "path": str(folder / "store")}, "status_interval_s": 1.0,
           "metrics_interval_s": 3600, "log_level": "WARNING", "destinations": [dest]}
    path = folder / "publisher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return start([sys.executable, "components/publisher/main.py", "--config", str(path)], folder / "publisher.log",
                 env={"PYTHONPATH": str(ROOT)})


class _Arrivals:
    """A QoS 1 subscriber that notes (source time, arrival time) in ns of every record, both on this machine's
    clock; it does nothing else in paho's thread, so its own delay stays out of the figures."""

    def __init__(self, mosq: Mosquitto) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[bytes | bytearray, int]] = []  # (payload, arrival ns), decoded after the run
        ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-sub")
        self._client.tls_set(ca_certs=str(mosq.pki.ca), certfile=str(mosq.pki.client_cert),
                             keyfile=str(mosq.pki.client_key))
        self._client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self._client.on_subscribe = lambda *_: ready.set()
        # the subscriber's own socket must not add Nagle delays to what it measures
        self._client.on_socket_open = lambda _c, _u, sock: _nodelay(sock)
        self._client.on_message = lambda _c, _u, msg: self.got.append((msg.payload, time.time_ns()))
        self._client.connect("127.0.0.1", mosq.tls_port)
        self._client.loop_start()
        if not ready.wait(10):
            raise TimeoutError("no SUBACK from mosquitto")

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _nodelay(sock: Any) -> None:
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_SECONDS: dict[str, int] = {}


def _ns(iso: str) -> int:
    """RFC 3339 ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` (the payloads' form) to ns since the epoch."""
    head, frac = iso[:19], iso[20:-1]
    secs = _SECONDS.get(head)
    if secs is None:
        secs = _SECONDS[head] = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int(frac.ljust(9, "0"))


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _append_delays(store_dir: Path, t0: int, t1: int) -> list[float]:
    """ms from each value's source time to its stream message's append time (ms resolution), inside the window."""
    store = EmbeddedStore(store_dir)
    out: list[float] = []
    seq = 0
    while True:
        messages = store.read(STREAM, seq, max_count=1000)
        if not messages:
            break
        for m in messages:
            out += [m.ts_ms - r.source_ts_ns / 1e6 for r in decode_batch(m.payload)
                    if t0 <= r.source_ts_ns < t1 and r.tag.startswith("tag")]
        seq = messages[-1].seq + 1
    store.close()
    return out


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        folder = Path(tmp)
        mosq = start_mosquitto(folder / "mosquitto")
        server, port = modbus_server(folder, TAGS)
        procs: list[Proc] = [server]
        try:
            subscriber = _Arrivals(mosq)
            procs.append(_publisher(folder, mosq))
            procs.append(_collector(folder, port))
            wait_for(lambda: len(subscriber.got) > 0 or any(p.popen.poll() is not None for p in procs), 60,
                     "the first record at the subscriber")
            time.sleep(WARMUP_S)  # a benchmark window, not synchronisation
            t0 = time.time_ns()
            time.sleep(WINDOW_S)
            t1 = time.time_ns()
            time.sleep(2.0)  # let the window's last values arrive
            subscriber.stop()
            for p in procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.popen.args!r} exited: {p.output()[-2000:]}")
        finally:
            for p in reversed(procs):
                p.stop()
            mosq.stop()
        latencies: list[float] = []
        for payload, arrived in subscriber.got:
            for r in json.loads(payload)["records"]:
                ts = _ns(r["sourceTs"])
                if t0 <= ts < t1:
                    latencies.append((arrived - ts) / 1e6)
        appends = _append_delays(folder / "store", t0, t1)
    if not latencies:
        raise RuntimeError("no value of the window arrived")
    seconds = (t1 - t0) / 1e9
    return {
        "pipeline.latency_p50_ms": round(_percentile(latencies, 50), 1),
        "pipeline.latency_p99_ms": round(_percentile(latencies, 99), 1),
        "pipeline.values_per_s": round(len(latencies) / seconds, 1),
        "pipeline.append_p50_ms": round(_percentile(appends, 50), 1),
        "pipeline.append_p99_ms": round(_percentile(appends, 99), 1),
    }


if __name__ == "__main__":
    load = os.getloadavg()
    for key, value in run().items():
        print(f"{key} = {value}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
