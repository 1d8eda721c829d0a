"""Destinations do not hold each other back; bad input is dead-lettered or retried, counted and logged once."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from devkit.peers import Mosquitto
from gateway.destinations.base import Route, SendResult
from gateway.destinations.file import FileConfig, FileDestination
from gateway.destinations.file import diagnose as file_diagnose
from gateway.destinations.mqtt import MqttConfig, MqttDestination, MqttTls
from gateway.destinations.mqtt import diagnose as mqtt_diagnose
from gateway.errors import DestinationError
from gateway.record import Kind, Record, make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import fill_values, make_publisher, read_jsonl, run_until

ROUTE = Route(streams=["values"])


class _RejectAll:
    """Refuses every record for good, and only once the test lets it answer: it is stuck until then."""

    def __init__(self) -> None:
        self.name = "reject"
        self.release = asyncio.Event()
        self.calls = 0

    async def start(self) -> None: ...

    async def send(self, records: list[Record]) -> SendResult:
        self.calls += 1
        await self.release.wait()
        raise DestinationError("refused: schema mismatch", fix="none", retryable=False)

    async def close(self, timeout_s: float) -> None: ...


def test_a_destination_that_rejects_everything_does_not_slow_the_others(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 2000)
    ok = FileConfig(name="ok", path=str(tmp_path / "ok.jsonl"), route=ROUTE)
    bad = FileConfig(name="reject", route=ROUTE)
    rejecting = _RejectAll()
    pub = make_publisher(store, tmp_path, {"reject": (bad, rejecting), "ok": (ok, FileDestination(ok))})

    def ok_done_then_release() -> bool:
        if len(read_jsonl(tmp_path / "ok.jsonl")) >= 2000:
            rejecting.release.set()  # only now may the rejecting destination answer at all
        return pub.counters["reject"].records_dead_lettered >= 2000

    asyncio.run(run_until(pub, ok_done_then_release, timeout=60))
    assert len(read_jsonl(tmp_path / "ok.jsonl")) == 2000 and pub.counters["ok"].records_dead_lettered == 0
    assert pub.counters["reject"].records_sent == 0 and pub.counters["reject"].records_dead_lettered == 2000
    assert pub.counters["reject"].dead_letter_reasons == {"refused: schema mismatch. Fix: none": 2000}
    dlq = RecordReader(store, "dlq", "t", PositionStore(tmp_path / "p2")).poll(max_messages=10_000, timeout_s=0)
    assert len(dlq.records) == 2000


def test_malformed_stream_messages_are_skipped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    store.create_stream(StreamSpec(name="values"))
    writer = RecordWriter(store, "values")
    writer.write([make_record("plc", "a", 1.0, seq=1)])
    for junk in (b"not a record batch", b"\x00\x01\x02", b"{}"):
        store.append("values", junk)
    writer.write([make_record("plc", "a", 2.0, seq=2)])
    cfg = FileConfig(name="f", path=str(tmp_path / "o.jsonl"), route=ROUTE)
    pub = make_publisher(store, tmp_path, {"f": (cfg, FileDestination(cfg))})
    with caplog.at_level(logging.ERROR):
        asyncio.run(run_until(pub, lambda: pub.counters["f"].records_sent >= 2
                              and pub.counters["f"].corrupt_messages_read >= 3))
    assert [g["seq"] for g in read_jsonl(tmp_path / "o.jsonl")] == [1, 2]
    assert len([r for r in caplog.records if "skipped message" in r.getMessage()]) == 1
    status = json.loads((tmp_path / "status" / "factoryedge.Publisher.json").read_text())
    assert status["destinations"]["f"]["corrupt_messages_read"] == 3


def test_broker_refusing_the_client_is_retried_counted_logged_once_and_diagnosed(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 100)
    no_cert = MqttConfig(name="m", host="127.0.0.1", port=mosquitto.tls_port, route=ROUTE,
                              tls=MqttTls(ca_file=str(mosquitto.pki.ca)), retry_min_s=0.05, retry_max_s=0.1)
    pub = make_publisher(store, tmp_path, {"m": (no_cert, MqttDestination(no_cert))})
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        asyncio.run(run_until(pub, lambda: pub.counters["m"].send_retries >= 5))
    assert pub.counters["m"].records_sent == 0 and pub.counters["m"].records_dead_lettered == 0  # kept, not dropped
    # logged once per reason, not per attempt: "not connected yet" may come first when the publisher tries before
    # the broker's refusal arrives, then the refusal itself; neither is repeated over the 5+ retries
    reasons = [r.getMessage() for r in caplog.records if "not connected" in r.getMessage()]
    assert 1 <= len(reasons) <= 2 and len(set(reasons)) == len(reasons), reasons
    assert PositionStore(tmp_path / "positions").get("m", "values") is None

    findings = {f.check: f for f in asyncio.run(mqtt_diagnose(no_cert, 3.0))}
    assert findings["tcp"].ok and findings["tls"].ok
    assert findings["mqtt connect"].ok is False and "client certificate" in findings["mqtt connect"].fix
    good = no_cert.model_copy(update={"tls": MqttTls(ca_file=str(mosquitto.pki.ca),
                                                     cert_file=str(mosquitto.pki.client_cert),
                                                     key_file=str(mosquitto.pki.client_key))})
    assert all(f.ok for f in asyncio.run(mqtt_diagnose(good, 3.0)))
    # a CA file deleted since validation (validation refuses a missing one)
    wrong_ca = no_cert.model_copy(update={"tls": MqttTls.model_construct(ca_file=str(tmp_path / "missing-ca.pem"),
                                                                         cert_file=None, key_file=None, alpn=[])})
    assert {f.check: f.ok for f in asyncio.run(mqtt_diagnose(wrong_ca, 3.0))}["tls"] is False


def test_file_diagnose(tmp_path: Path) -> None:
    ok = asyncio.run(file_diagnose(FileConfig(name="f", path=str(tmp_path / "out" / "r.jsonl")), 1.0))
    assert ok[0].ok is True
    (tmp_path / "blocker").write_text("a file where a folder should be")
    bad = asyncio.run(file_diagnose(FileConfig(name="f", path=str(tmp_path / "blocker" / "r.jsonl")), 1.0))
    assert bad[0].ok is False and "writable" in bad[0].fix


def test_routing_by_kind_source_and_excluded_tags_and_metrics_as_records(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    store.create_stream(StreamSpec(name="values"))
    RecordWriter(store, "values").write([
        make_record("plc", "line/temp", 1.0, seq=1),
        make_record("plc", "line/debug", 2.0, seq=2),
        make_record("rcf", "anomaly/plant/score", 0.3, seq=3, kind=Kind.SCORE),
        make_record("rcf", "anomaly/plant/alarm", True, seq=4, kind=Kind.ALARM),
        make_record("other", "line/temp", 5.0, seq=5),
    ])
    cfg = FileConfig(name="f", path=str(tmp_path / "o.jsonl"), route=Route(
        streams=["values", "metrics"], kinds=["value", "alarm", "metric"], sources=["plc", "rcf", "factoryedge.*"],
        exclude_tags=["*/debug"]))
    pub = make_publisher(store, tmp_path, {"f": (cfg, FileDestination(cfg))})
    pub.metrics_interval_s = 0.2
    asyncio.run(run_until(pub, lambda: {"metric", "alarm"} <= {g["kind"] for g in read_jsonl(tmp_path / "o.jsonl")}))
    got = read_jsonl(tmp_path / "o.jsonl")
    assert [g["seq"] for g in got if g["kind"] != "metric"] == [1, 4]
    metrics = {g["tag"] for g in got if g["kind"] == "metric"}
    assert {"publisher/f/records_sent", "publisher/f/oldest_unsent_age_s", "publisher/f/last_success_age_s",
            "publisher/f/records_dead_lettered", "publisher/f/backlog_messages"} <= metrics
