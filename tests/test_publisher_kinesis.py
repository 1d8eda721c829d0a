"""Kinesis destination against kinesalite (read back with GetRecords), and partial failures through a fault proxy."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from pydantic import ValidationError

from devkit.kinesis_fault import KinesisFaultProxy
from devkit.kinesis_peer import TEST_CREDENTIALS, Kinesalite, create_stream, gateway_records, read_all
from gateway.destinations.aws import AwsSettings
from gateway.destinations.base import Route
from gateway.destinations.kinesis import KinesisConfig, KinesisDestination, diagnose
from gateway.record import Record, make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import fill_values, make_publisher, run_until

ROUTE = Route(streams=["values"])
_names = itertools.count()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


@pytest.fixture
def stream(kinesalite: Kinesalite) -> str:
    name = f"test-{next(_names)}"
    create_stream(kinesalite.endpoint_url, name, shards=2)
    return name


@pytest.fixture
def proxy(kinesalite: Kinesalite) -> Iterator[KinesisFaultProxy]:
    p = KinesisFaultProxy(kinesalite.port).start()
    yield p
    p.stop()


def _cfg(endpoint: str, stream: str, **kw: Any) -> KinesisConfig:
    # kinesalite speaks plain HTTP on 127.0.0.1: allowed here, refused by default
    aws = AwsSettings(endpoint_url=endpoint, allow_insecure_endpoint=True)
    return KinesisConfig(name="k", route=ROUTE, stream_name=stream, aws=aws,
                              retry_min_s=0.02, retry_max_s=0.1, **kw)


def _in_order_per_tag(got: list[dict[str, Any]]) -> bool:
    seqs: dict[str, list[int]] = {}
    for g in got:
        seqs.setdefault(g["tag"], []).append(g["seq"])
    return all(s == sorted(s) for s in seqs.values())


def test_records_arrive_once_in_order_per_tag_read_back_with_get_records(
    tmp_path: Path, kinesalite: Kinesalite, stream: str
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    written = fill_values(store, 5000)
    cfg = _cfg(kinesalite.endpoint_url, stream, records_per_kinesis_record=50)
    dest = KinesisDestination(cfg)
    pub = make_publisher(store, tmp_path, {"k": (cfg, dest)})
    asyncio.run(run_until(pub, lambda: pub.counters["k"].records_sent >= 5000))
    # the calls go out without botocore's own parameter checks (issue 18): a call it
    # would refuse locally (ParamValidationError) reaches the service, which refuses it
    with pytest.raises(botocore.exceptions.ClientError, match="ValidationException"):
        dest._client.put_records(StreamName=stream, Records=[])
    raw = read_all(kinesalite.endpoint_url, stream)
    assert {key for key, _ in raw} == {f"line/temp{i}" for i in range(7)}  # partition key per tag
    assert all(len(json.loads(data)["records"]) <= 50 for _, data in raw)
    got = gateway_records(kinesalite.endpoint_url, stream)
    assert sorted(g["id"] for g in got) == sorted(r.id for r in written) and _in_order_per_tag(got)


@pytest.mark.parametrize("name", ["my stream", "values/line1", "été"])
def test_a_stream_name_kinesis_refuses_is_a_config_error_naming_the_field(name: str) -> None:
    # with botocore's parameter validation off, the name is checked here against the service's own pattern
    with pytest.raises(ValidationError, match="stream_name"):
        KinesisConfig(name="k", route=ROUTE, stream_name=name)


def test_partial_failure_resends_only_the_failed_records(
    tmp_path: Path, kinesalite: Kinesalite, stream: str, proxy: KinesisFaultProxy
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    written = fill_values(store, 3000)
    proxy.fail_records(3, "ProvisionedThroughputExceededException")
    proxy.fail_records(2, "InternalFailure")
    cfg = _cfg(proxy.endpoint_url, stream, records_per_kinesis_record=20)
    pub = make_publisher(store, tmp_path, {"k": (cfg, KinesisDestination(cfg))})
    asyncio.run(run_until(pub, lambda: pub.counters["k"].records_sent >= 3000))
    assert proxy.records_failed == 5 and pub.counters["k"].send_retries >= 1
    got = gateway_records(kinesalite.endpoint_url, stream)
    ids = [g["id"] for g in got]
    assert len(ids) == len(set(ids)) == 3000 and set(ids) == {r.id for r in written}  # no duplicate, none lost
    assert _in_order_per_tag(got)


def test_throttled_calls_are_retried_with_backoff_and_logged_once(
    tmp_path: Path, kinesalite: Kinesalite, stream: str, proxy: KinesisFaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 1000)
    proxy.throttle_calls(6)
    cfg = _cfg(proxy.endpoint_url, stream)
    pub = make_publisher(store, tmp_path, {"k": (cfg, KinesisDestination(cfg))})
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        asyncio.run(run_until(pub, lambda: pub.counters["k"].records_sent >= 1000))
    assert proxy.calls_throttled == 6 and pub.counters["k"].send_retries >= 6
    assert len([r for r in caplog.records if "ProvisionedThroughputExceeded" in r.getMessage()]) == 1
    assert len(gateway_records(kinesalite.endpoint_url, stream)) == 1000


def test_oversized_record_dead_lettered_missing_stream_waited_for(
    tmp_path: Path, kinesalite: Kinesalite, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"later-{next(_names)}"
    store = EmbeddedStore(tmp_path / "store")
    store.create_stream(StreamSpec(name="values"))
    records: list[Record] = [make_record("plc", "a", float(i), seq=i) for i in range(10)]
    records.insert(5, make_record("plc", "a", "x" * (1024 * 1024), seq=99))
    RecordWriter(store, "values").write(records)
    cfg = _cfg(kinesalite.endpoint_url, name)
    pub = make_publisher(store, tmp_path, {"k": (cfg, KinesisDestination(cfg))})

    created: list[str] = []

    def created_later() -> bool:
        if pub.counters["k"].send_retries >= 3 and not created:  # the operator creates the stream
            create_stream(kinesalite.endpoint_url, name)
            created.append(name)
        return pub.counters["k"].records_sent >= 10

    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        asyncio.run(run_until(pub, created_later))
    assert pub.counters["k"].records_dead_lettered == 1 and "Kinesis record limit" in caplog.text
    assert len([r for r in caplog.records if "ResourceNotFoundException" in r.getMessage()]) == 1
    assert "create the Kinesis stream" in caplog.text
    assert [g["seq"] for g in gateway_records(kinesalite.endpoint_url, name)] == list(range(10))


def test_diagnose(kinesalite: Kinesalite, stream: str) -> None:
    findings = {f.check: f for f in asyncio.run(diagnose(_cfg(kinesalite.endpoint_url, stream), 2.0))}
    assert findings["stream"].ok is True and "ACTIVE" in findings["stream"].detail
    missing = {f.check: f for f in asyncio.run(diagnose(_cfg(kinesalite.endpoint_url, "no-such-stream"), 2.0))}
    assert missing["stream"].ok is False and "create the Kinesis stream" in missing["stream"].fix
    assert findings["aws credentials"].ok is True and "env" in findings["aws credentials"].detail
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in json.dumps([f.as_dict() for f in findings.values()])
    assert findings["endpoint"].ok is True and findings["aws region"].ok is True
    findings = {f.check: f for f in asyncio.run(diagnose(_cfg("http://127.0.0.1:9", "x"), 2.0))}
    assert findings["endpoint"].ok is False
