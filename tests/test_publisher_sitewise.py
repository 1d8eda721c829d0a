"""SiteWise destination against devkit.sitewise_fake: quotas, per-entry errors, credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devkit.kinesis_peer import TEST_CREDENTIALS
from devkit.sitewise_fake import SiteWiseFake
from gateway.destinations.aws import AwsSettings
from gateway.destinations.base import Route
from gateway.destinations.sitewise import SiteWiseConfig, SiteWiseDestination, diagnose
from gateway.errors import DestinationError
from gateway.record import Record, make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import make_publisher, run_until

ROUTE = Route(streams=["values"])
TAGS = {f"/plant/line1/t{i}": "DOUBLE" for i in range(12)}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


@pytest.fixture
def fake() -> Iterator[SiteWiseFake]:
    service = SiteWiseFake({**TAGS, "/plant/line1/count": "INTEGER", "/plant/line1/state": "STRING"}).start()
    yield service
    service.stop()


def _write(store: EmbeddedStore, records: list[Record], per_message: int = 100) -> None:
    store.create_stream(StreamSpec(name="values"))
    writer = RecordWriter(store, "values")
    for i in range(0, len(records), per_message):
        writer.write(records[i : i + per_message])


def _values(n: int, now_ns: int) -> list[Record]:
    return [make_record("plc", f"/plant/line1/t{i % 12}", float(i), seq=i, source_ts_ns=now_ns - (n - i) * 1000)
            for i in range(n)]


def _sink(fake: SiteWiseFake, **kw: Any) -> tuple[SiteWiseConfig, SiteWiseDestination]:
    aws = AwsSettings(endpoint_url=fake.endpoint_url, allow_insecure_endpoint=True)  # the fake is plain HTTP
    cfg = SiteWiseConfig(name="sw", route=ROUTE, aws=aws,
                              retry_min_s=0.02, retry_max_s=0.1, **kw)
    return cfg, SiteWiseDestination(cfg)


def test_values_arrive_in_requests_within_the_quotas(tmp_path: Path, aws_env: None, fake: SiteWiseFake) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = _values(3000, time.time_ns())
    _write(store, records)
    pub = make_publisher(store, tmp_path, {"sw": _sink(fake)})
    asyncio.run(run_until(pub, lambda: fake.value_count() >= 3000))
    assert fake.value_count() == 3000 and not fake.entry_errors  # each value once; no request over 10 x 10
    assert fake.requests >= 3000 / 100
    stored = {(alias, ts) for alias, vs in fake.values.items() for ts, _, _ in vs}
    assert stored == {(r.tag, r.source_ts_ns) for r in records}
    assert pub.counters["sw"].records_sent == 3000 and pub.counters["sw"].bytes_sent > 0


def test_bad_values_are_dead_lettered_counted_and_logged_once_each(
    tmp_path: Path, aws_env: None, fake: SiteWiseFake, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time_ns()
    good = _values(50, now)
    bad = [
        *(make_record("plc", "/plant/unknown", float(i), seq=1000 + i, source_ts_ns=now - i) for i in range(5)),
        *(make_record("plc", "/plant/line1/count", 2.5, seq=2000 + i, source_ts_ns=now - i) for i in range(3)),
        *(make_record("plc", "/plant/line1/t1", 1.0, seq=3000 + i, source_ts_ns=now - 8 * 86400 * 10**9 - i)
          for i in range(4)),
        make_record("plc", "/plant/line1/t2", 1.0, seq=4000, source_ts_ns=now + 3600 * 10**9),
        make_record("plc", "/plant/line1/count", 2**40, seq=5000, source_ts_ns=now),
        make_record("plc", "/plant/line1/t3", None, seq=6000, source_ts_ns=now),
    ]
    store = EmbeddedStore(tmp_path / "store")
    _write(store, good + bad, per_message=20)
    pub = make_publisher(store, tmp_path, {"sw": _sink(fake)})
    with caplog.at_level(logging.ERROR, logger="gateway.publisher"):
        asyncio.run(run_until(pub, lambda: pub.counters["sw"].records_dead_lettered >= len(bad)
                              and pub.counters["sw"].records_sent >= 50))
    c = pub.counters["sw"]
    assert c.records_sent == 50 and c.records_dead_lettered == len(bad) and fake.value_count() == 50
    assert fake.entry_errors["ResourceNotFoundException"] >= 1 and fake.entry_errors["InvalidRequestException"] >= 1
    lines = [r.getMessage() for r in caplog.records]
    for needle, fix in (("ResourceNotFoundException", "create the asset property"),
                        ("InvalidRequestException", "data type"), ("older than 7 days", "clock"),
                        ("in the future", "clock"), ("32-bit", "DOUBLE"), ("no value", "BAD")):
        hits = [line for line in lines if needle in line]
        assert len(hits) == 1, (needle, lines)  # once, however many records had the problem
        assert fix in hits[0]


def test_retryable_entry_errors_resend_only_those_values(tmp_path: Path, aws_env: None, fake: SiteWiseFake) -> None:
    store = EmbeddedStore(tmp_path / "store")
    _write(store, _values(1000, time.time_ns()))
    fake.inject("InternalFailureException", 3)
    fake.inject("ThrottlingException", 2)
    fake.inject("ServiceUnavailableException", 1)
    pub = make_publisher(store, tmp_path, {"sw": _sink(fake)})
    asyncio.run(run_until(pub, lambda: fake.value_count() >= 1000 and pub.counters["sw"].records_sent >= 1000))
    assert fake.value_count() == 1000  # no value twice: the accepted entries were not resent
    assert pub.counters["sw"].send_retries >= 1 and pub.counters["sw"].records_dead_lettered == 0


def test_request_throttling_is_waited_out(tmp_path: Path, aws_env: None) -> None:
    fake = SiteWiseFake(TAGS, requests_per_s=20, values_per_s_per_alias=150).start()
    try:
        store = EmbeddedStore(tmp_path / "store")
        _write(store, _values(3000, time.time_ns()))
        pub = make_publisher(store, tmp_path, {"sw": _sink(fake, concurrent_requests=8)})
        asyncio.run(run_until(pub, lambda: pub.counters["sw"].records_sent >= 3000, timeout=60))
        assert fake.throttled > 0 and fake.entry_errors["ThrottlingException"] > 0
        assert pub.counters["sw"].send_retries > 0
        assert fake.value_count() == 3000 and pub.counters["sw"].records_dead_lettered == 0
    finally:
        fake.stop()


def test_expired_then_missing_credentials_retry_with_one_line_then_recover(
    tmp_path: Path, aws_env: None, fake: SiteWiseFake, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.expired_keys.add(TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"])
    store = EmbeddedStore(tmp_path / "store")
    _write(store, _values(200, time.time_ns()))
    pub = make_publisher(store, tmp_path, {"sw": _sink(fake)})

    def renewed() -> bool:
        if pub.counters["sw"].send_retries >= 4:
            fake.expired_keys.clear()  # the token exchange service hands out a fresh token
        return fake.value_count() >= 200

    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        asyncio.run(run_until(pub, renewed))
    lines = [r.getMessage() for r in caplog.records if "credentials" in r.getMessage()]
    assert len(lines) == 1 and "ExpiredTokenException" in lines[0] and "TokenExchangeService" in lines[0]
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in caplog.text
    assert pub.counters["sw"].records_dead_lettered == 0 and fake.value_count() == 200

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    findings = {f.check: f for f in asyncio.run(diagnose(_sink(fake)[0], 2.0))}
    assert findings["aws credentials"].ok is False and "TokenExchangeService" in findings["aws credentials"].fix
    assert findings["endpoint"].ok is True

    async def send_without_credentials() -> None:
        _, sink = _sink(fake)
        try:
            with pytest.raises(DestinationError, match="NoCredentialsError") as missing:
                await sink.send(_values(3, time.time_ns()))
        finally:
            await sink.close(5.0)
        assert missing.value.retryable and "AWS_PROFILE" in missing.value.fix

    asyncio.run(send_without_credentials())


class _TokenExchange(BaseHTTPRequestHandler):
    """What Greengrass' token exchange service answers at AWS_CONTAINER_CREDENTIALS_FULL_URI."""

    served = 0

    def do_GET(self) -> None:  # http.server calls it by this name
        type(self).served += 1
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        body = json.dumps({"AccessKeyId": "ASIATESFROMGREENGRASS", "SecretAccessKey": "tes-secret",
                           "Token": "tes-token", "Expiration": expiry}).encode()
        self.send_response(200 if self.headers.get("Authorization") == "svc-token" else 403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def test_credentials_from_the_token_exchange_service(
    tmp_path: Path, aws_env: None, fake: SiteWiseFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    tes = ThreadingHTTPServer(("127.0.0.1", 0), _TokenExchange)
    threading.Thread(target=tes.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{tes.server_address[1]}/2016-11-01/credentialprovider/")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "svc-token")
        findings = {f.check: f for f in asyncio.run(diagnose(_sink(fake)[0], 2.0))}
        assert findings["aws credentials"].ok is True and "container-role" in findings["aws credentials"].detail
        assert "tes-secret" not in json.dumps([f.as_dict() for f in findings.values()])
        fake.expired_keys.add(TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"])  # only the TES' key may work
        store = EmbeddedStore(tmp_path / "store")
        _write(store, _values(100, time.time_ns()))
        pub = make_publisher(store, tmp_path, {"sw": _sink(fake)})
        asyncio.run(run_until(pub, lambda: fake.value_count() >= 100))
        assert _TokenExchange.served >= 1 and pub.counters["sw"].send_retries == 0
    finally:
        tes.shutdown()
        tes.server_close()
