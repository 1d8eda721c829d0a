"""IoT Core destination: the real awsiotsdk client publishing through devkit.ipc_server (the IPC wire protocol)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from devkit.ipc_server import MQTT_PROXY, IpcServer
from gateway.destinations.base import Route
from gateway.destinations.iotcore import IotCoreConfig, IotCoreDestination, RateLimiter, check_iot_topic, diagnose
from gateway.record import make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import PUBLISHER, fill_values, make_publisher, run_until

ROUTE = Route(streams=["values"])
ALLOW_TELEMETRY = {MQTT_PROXY: {"factoryedge.Publisher:mqttproxy:1": {
    "operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["factoryedge/+/telemetry/#"]}}}


def _records(payloads: list[bytes]) -> list[dict[str, object]]:
    return [r for p in payloads for r in json.loads(p)["records"]]


def test_everything_arrives_batched_within_128kb_in_order_per_topic(tmp_path: Path, ipc_env: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    written = fill_values(store, 6000)

    async def body() -> None:
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, access_control={PUBLISHER: ALLOW_TELEMETRY})
        await server.start()
        cfg = IotCoreConfig(name="iot", route=ROUTE, topic="factoryedge/{thing}/telemetry/{site}/{group}",
                                 topic_vars={"site": "plant7"}, max_message_bytes=16 * 1024,
                                 max_messages_per_s=10_000, max_bytes_per_s=100e6)
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        try:
            await run_until(pub, lambda: len(_records([m.payload for m in server.published])) >= 6000)
        finally:
            await server.stop()
        assert {m.topic for m in server.published} == {"factoryedge/line1-gw/telemetry/plant7/line"}
        assert all(m.qos == 1 and len(m.payload) <= 16 * 1024 for m in server.published)
        got = _records([m.payload for m in server.published])
        assert [g["id"] for g in got] == [r.id for r in written]  # once each, in stream order
        assert pub.counters["iot"].records_sent == 6000 and pub.counters["iot"].records_dead_lettered == 0

    asyncio.run(body())


def test_refused_topic_is_retried_and_logged_once_until_the_recipe_allows_it(
    tmp_path: Path, ipc_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 300)

    async def body() -> None:
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, access_control={PUBLISHER: ALLOW_TELEMETRY})
        await server.start()
        cfg = IotCoreConfig(name="iot", route=ROUTE, topic="plant/{source}", retry_min_s=0.02, retry_max_s=0.05)
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})

        def allow_after_retries() -> bool:
            if pub.counters["iot"].send_retries >= 5:  # the operator fixes the recipe's accessControl and redeploys
                server.access_control[PUBLISHER] = {MQTT_PROXY: {"p": {
                    "operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["plant/#"]}}}
            return len(_records([m.payload for m in server.published])) >= 300

        try:
            with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
                await run_until(pub, allow_after_retries)
        finally:
            await server.stop()
        refusals = [r for r in caplog.records if "not authorized" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert "accessControl" in refusals[0].getMessage()  # the fix is in the one line
        assert pub.counters["iot"].send_retries >= 5 and pub.counters["iot"].records_dead_lettered == 0
        assert pub.counters["iot"].records_sent == 300

    asyncio.run(body())


def test_oversized_records_and_bad_topics_are_dead_lettered(tmp_path: Path, ipc_env: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    store.create_stream(StreamSpec(name="values"))
    records = [make_record("plc", "a/b", 1.0, seq=1), make_record("plc", "a/b", "x" * 200_000, seq=2),
               make_record("plc", "a/b/c/d/e/f/g/h/i", 3.0, seq=3), make_record("plc", "a/b", 4.0, seq=4)]
    RecordWriter(store, "values").write(records)

    async def body() -> None:
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER})
        await server.start()
        cfg = IotCoreConfig(name="iot", route=ROUTE, topic="factoryedge/{thing}/telemetry/{tag}")
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        try:
            await run_until(pub, lambda: pub.counters["iot"].records_dead_lettered
                            + pub.counters["iot"].records_sent >= 4)
        finally:
            await server.stop()
        assert [g["seq"] for g in _records([m.payload for m in server.published])] == [1, 4]
        reasons = " | ".join(pub.counters["iot"].dead_letter_reasons)
        assert pub.counters["iot"].records_dead_lettered == 2
        assert "does not fit a message" in reasons and "slashes" in reasons

    asyncio.run(body())


def test_topic_rules_and_diagnose(ipc_env: Path) -> None:
    assert check_iot_topic("a/b") is None
    assert "wildcard" in str(check_iot_topic("a/+/b"))
    assert "$" in str(check_iot_topic("$aws/things/x"))

    async def body() -> None:
        cfg = IotCoreConfig(name="iot")
        findings = {f.check: f for f in await diagnose(cfg, 2.0)}
        assert findings["topic template"].ok is True
        assert findings["greengrass ipc"].ok is False  # no server listening on the socket yet
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER})
        await server.start()
        try:
            findings = {f.check: f for f in await diagnose(cfg, 2.0)}
        finally:
            await server.stop()
        assert findings["greengrass ipc"].ok is True

    asyncio.run(body())


def test_rate_limiter_holds_publishes_to_the_quota() -> None:
    async def body() -> float:
        limiter = RateLimiter(messages_per_s=20, bytes_per_s=1e9)
        start = time.monotonic()
        for _ in range(30):  # a one-second burst of 20, then 10 more at 20 a second
            await limiter.acquire(100)
        return time.monotonic() - start

    assert asyncio.run(body()) >= 0.45  # a limiter can only be slower than its quota, never faster


def test_iotcore_destinations_share_one_device_budget_below_the_quota() -> None:
    """Two destinations on the nucleus' one connection: together within the publisher's share (65/s), not 100 each."""
    from gateway.destinations.iotcore import DETECTOR_BUDGET, IOT_CORE_QUOTA, PUBLISHER_BUDGET, publisher_limiter

    assert PUBLISHER_BUDGET[0] + DETECTOR_BUDGET[0] <= 0.8 * IOT_CORE_QUOTA[0]
    assert PUBLISHER_BUDGET[1] + DETECTOR_BUDGET[1] <= 0.8 * IOT_CORE_QUOTA[1]

    async def body() -> float:
        sinks = [IotCoreDestination(IotCoreConfig(name=n)) for n in ("a", "b")]
        own = IotCoreDestination(IotCoreConfig(name="own", max_messages_per_s=5))
        assert own._own_limiter is not None and sinks[0]._own_limiter is None
        limiters = [s._own_limiter or publisher_limiter() for s in sinks]
        assert limiters[0] is limiters[1]
        start = time.monotonic()
        await asyncio.gather(*(lim.acquire(100) for lim in limiters for _ in range(50)))
        return time.monotonic() - start

    # 100 publishes at 65/s with a one-second burst of 65: at least (100 - 65) / 65 s; 100 each would be instant
    assert asyncio.run(body()) >= 0.5
