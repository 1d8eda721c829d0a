"""The publisher against real peers: file, mosquitto with mutual TLS, a dead destination, a poison record."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devkit.peers import Mosquitto, free_port
from gateway.destinations.base import Route, SendResult
from gateway.destinations.file import FileConfig, FileDestination
from gateway.destinations.mqtt import MqttConfig, MqttDestination, MqttTls
from gateway.errors import DestinationError
from gateway.record import Record
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import ROUTE, fill_values, make_publisher, read_jsonl, run_until


def test_file_destination_delivers_everything_once_and_commits(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 1000)
    cfg = FileConfig(name="f", path=str(tmp_path / "out.jsonl"), route=ROUTE)
    pub = make_publisher(store, tmp_path, {"f": (cfg, FileDestination(cfg))})
    asyncio.run(run_until(pub, lambda: len(read_jsonl(tmp_path / "out.jsonl")) >= 1000))
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [g["id"] for g in got] == [r.id for r in records]
    assert got[0]["quality"] == "GOOD" and got[0]["sourceTs"] == "2023-11-14T22:13:20.000000000Z"
    assert PositionStore(tmp_path / "positions").get("f", "values") == store.describe("values").next_seq
    status = json.loads((tmp_path / "status" / "factoryedge.Publisher.json").read_text())
    assert status["destinations"]["f"]["records_sent"] == 1000
    assert status["status_interval_s"] == 0.2  # gatewayctl calls a status STALE after three of its intervals


def _subscriber(broker: Mosquitto, received: list[dict[str, Any]], ready: threading.Event) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub")
    client.tls_set(ca_certs=str(broker.pki.ca), certfile=str(broker.pki.client_cert),
                   keyfile=str(broker.pki.client_key))
    client.on_connect = lambda c, *_: c.subscribe("factoryedge/#", qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda c, u, msg: received.extend(json.loads(msg.payload)["records"])
    client.connect("127.0.0.1", broker.tls_port)
    client.loop_start()
    assert ready.wait(10), "subscriber did not connect"
    return client


def test_mqtt_with_mutual_tls_delivers_batched_records(tmp_path: Path, mosquitto: Mosquitto) -> None:
    received: list[dict[str, Any]] = []
    sub = _subscriber(mosquitto, received, threading.Event())
    try:
        store = EmbeddedStore(tmp_path / "store")
        records = fill_values(store, 3000)
        tls = MqttTls(ca_file=str(mosquitto.pki.ca), cert_file=str(mosquitto.pki.client_cert),
                      key_file=str(mosquitto.pki.client_key))
        cfg = MqttConfig(name="m", host="127.0.0.1", port=mosquitto.tls_port, tls=tls, route=ROUTE,
                              client_id="pub-mtls", max_message_bytes=16 * 1024)
        pub = make_publisher(store, tmp_path, {"m": (cfg, MqttDestination(cfg))})
        asyncio.run(run_until(pub, lambda: len(received) >= 3000))
        assert sorted(r["id"] for r in received) == sorted(r.id for r in records)
        assert pub.counters["m"].records_sent == 3000
    finally:
        sub.loop_stop()


def test_broker_refuses_a_client_without_certificate(mosquitto: Mosquitto) -> None:
    events: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="no-cert")
    client.tls_set_context(ssl.create_default_context(cafile=str(mosquitto.pki.ca)))
    client.on_connect = lambda *a: events.append(f"connect {a[3]}")
    client.on_disconnect = lambda *a: events.append("disconnect")
    client.connect("127.0.0.1", mosquitto.tls_port)  # TLS 1.3: the refusal arrives after the handshake
    codes = [client.loop(timeout=0.5) for _ in range(4)]
    assert events and events[0] == "disconnect", events
    assert not any(e.startswith("connect") for e in events)
    assert all(code != mqtt.MQTT_ERR_SUCCESS for code in codes)


def test_dead_destination_does_not_hold_back_the_file(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 500)
    dead = MqttConfig(name="dead", host="127.0.0.1", port=free_port(), route=ROUTE, retry_min_s=0.05)
    ok = FileConfig(name="ok", path=str(tmp_path / "ok.jsonl"), route=ROUTE)
    pub = make_publisher(store, tmp_path, {"dead": (dead, MqttDestination(dead)), "ok": (ok, FileDestination(ok))})
    asyncio.run(run_until(pub, lambda: len(read_jsonl(tmp_path / "ok.jsonl")) >= 500
                          and pub.counters["dead"].send_retries > 2))
    assert pub.counters["dead"].records_sent == 0
    assert "not connected" in pub.counters["dead"].last_error
    assert PositionStore(tmp_path / "positions").get("dead", "values") is None  # nothing committed: all buffered
    assert pub.counters["dead"].backlog_messages == store.describe("values").next_seq


class _PoisonSink:
    """Refuses, for good, any batch holding the value 13.0: the publisher must isolate it."""

    def __init__(self) -> None:
        self.name = "poison"
        self.accepted: list[Record] = []

    async def start(self) -> None: ...

    async def send(self, records: list[Record]) -> SendResult:
        if any(r.value == 13.0 for r in records):
            raise DestinationError("value 13 is not accepted", fix="none", retryable=False)
        self.accepted.extend(records)
        return SendResult()

    async def close(self, timeout_s: float) -> None: ...


def test_poison_record_is_dead_lettered_alone(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 200, per_batch=100)
    sink = _PoisonSink()
    cfg = FileConfig(name="poison", route=ROUTE)
    pub = make_publisher(store, tmp_path, {"poison": (cfg, sink)})
    asyncio.run(run_until(pub, lambda: len(sink.accepted) >= 199))
    assert 13.0 not in [r.value for r in sink.accepted] and len(sink.accepted) == 199
    assert pub.counters["poison"].records_dead_lettered == 1
    dlq = RecordReader(store, "dlq", "t", PositionStore(tmp_path / "p2")).poll(timeout_s=0).records
    assert [r.value for r in dlq] == [13.0]


def test_routing_by_tag_pattern(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 70)
    cfg = FileConfig(name="f", path=str(tmp_path / "o.jsonl"),
                          route=Route(streams=["values"], tags=["line/temp3", "line/temp5"]))
    pub = make_publisher(store, tmp_path, {"f": (cfg, FileDestination(cfg))})
    asyncio.run(run_until(pub, lambda: PositionStore(tmp_path / "positions").get("f", "values") == 2))
    assert sorted({g["tag"] for g in read_jsonl(tmp_path / "o.jsonl")}) == ["line/temp3", "line/temp5"]
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 20
