"""gateway.ipc end to end: the real awsiotsdk client against devkit.ipc_server over a real Unix socket."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devkit.eventstream import FrameError, HeaderValue, encode_frame, read_frame
from devkit.ipc_server import IpcServer, topic_matches
from gateway.errors import ConfigError, DestinationError, GatewayError
from gateway.ipc import GreengrassIpc, running_under_greengrass

T = TypeVar("T")
COLLECTOR, PUBLISHER = "factoryedge.Collector", "factoryedge.Publisher"
TOKENS = {"token-collector": COLLECTOR, "token-publisher": PUBLISHER}
DEADLINE_S = 5.0
CONFIG: dict[str, Any] = {"interval": 1.0, "sources": {"plc1": {"host": "10.0.0.5", "port": 502}}}


def run(coro: Awaitable[T]) -> T:
    """Run one test body with a hard deadline, so a lost message fails the test instead of hanging it."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Short path on purpose: Unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ipc") as folder:
        yield Path(folder) / "ipc.sock"


@asynccontextmanager
async def serving(socket_path: Path, **server_args: Any) -> AsyncIterator[tuple[IpcServer, GreengrassIpc]]:
    """A started server with CONFIG for the collector, and the collector connected to it."""
    server = IpcServer(socket_path, TOKENS, **server_args)
    server.set_configuration(COLLECTOR, CONFIG)
    await server.start()
    ipc = await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="token-collector")
    try:
        yield server, ipc
    finally:
        ipc.close()
        await server.stop()


async def next_item(queue: asyncio.Queue[T]) -> T:
    return await asyncio.wait_for(queue.get(), DEADLINE_S)


def test_get_configuration_whole_subtree_leaf_and_other_component(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            server.set_configuration(PUBLISHER, {"topic": "factory/line1"})
            assert await ipc.get_configuration() == CONFIG
            assert await ipc.get_configuration(["sources", "plc1"]) == {"host": "10.0.0.5", "port": 502}
            assert await ipc.get_configuration(["interval"]) == {"interval": 1.0}
            assert await ipc.get_configuration(component=PUBLISHER) == {"topic": "factory/line1"}
            with pytest.raises(ConfigError, match="sources/plc9") as missing:
                await ipc.get_configuration(["sources", "plc9"])
            assert "DefaultConfiguration" in missing.value.fix

    run(body())


def test_configuration_update_is_pushed_and_reread(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            changed: asyncio.Queue[list[str]] = asyncio.Queue()
            await ipc.subscribe_configuration_updates(changed.put_nowait)
            server.set_configuration(COLLECTOR, {**CONFIG, "interval": 2.5})
            assert await next_item(changed) == ["interval"]
            assert await ipc.get_configuration(["interval"]) == {"interval": 2.5}

    run(body())


def _validator(proposed: dict[str, Any]) -> str | None:
    if proposed.get("interval", 0) <= 0:
        return f"interval must be > 0 s, got {proposed.get('interval')}"
    if "sources" not in proposed:
        raise ConfigError("no sources configured", fix="add at least one source")
    return None


def test_deployment_rejected_by_validator_leaves_configuration_unchanged(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            changed: asyncio.Queue[list[str]] = asyncio.Queue()
            await ipc.subscribe_configuration_updates(changed.put_nowait)
            await ipc.subscribe_validate_configuration(_validator)

            applied, message = await server.deploy_configuration(COLLECTOR, {**CONFIG, "interval": -1}, 5.0)
            assert (applied, message) == (False, "interval must be > 0 s, got -1")
            # A validator raising a GatewayError rejects with the error's text.
            applied, message = await server.deploy_configuration(COLLECTOR, {"interval": 3}, 5.0)
            assert not applied
            assert "no sources configured" in message

            assert server.configuration(COLLECTOR) == CONFIG
            assert await ipc.get_configuration() == CONFIG
            assert changed.empty()

    run(body())


def test_deployment_accepted_by_validator_is_applied_and_announced(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            changed: asyncio.Queue[list[str]] = asyncio.Queue()
            await ipc.subscribe_configuration_updates(changed.put_nowait)
            await ipc.subscribe_validate_configuration(_validator)

            new_config = {**CONFIG, "interval": 5.0}
            applied, _ = await server.deploy_configuration(COLLECTOR, new_config, 5.0)
            assert applied
            assert server.configuration(COLLECTOR) == new_config
            assert await next_item(changed) == ["interval"]
            assert await ipc.get_configuration(["interval"]) == {"interval": 5.0}

    run(body())


def test_deployment_without_validity_report_is_applied_after_timeout(socket_path: Path) -> None:
    async def body() -> None:
        never = asyncio.Event()

        async def stalled(proposed: dict[str, Any]) -> str | None:
            await never.wait()
            return "too late"

        async with serving(socket_path) as (server, ipc):
            await ipc.subscribe_validate_configuration(stalled)
            applied, message = await server.deploy_configuration(COLLECTOR, {"interval": 9.0}, timeout_s=0.2)
            assert applied, message
            assert "no validity report" in message
            assert server.configuration(COLLECTOR) == {"interval": 9.0}

    run(body())


def test_crashing_validator_rejects_the_deployment(socket_path: Path) -> None:
    def crashing(proposed: dict[str, Any]) -> str | None:
        return str(proposed["missing"])

    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            await ipc.subscribe_validate_configuration(crashing)
            applied, message = await server.deploy_configuration(COLLECTOR, {"interval": 9.0}, 5.0)
            assert not applied
            assert "KeyError" in message
            assert server.configuration(COLLECTOR) == CONFIG

    run(body())


def test_calls_after_the_server_went_away_fail_retryable(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            await ipc.update_state("RUNNING")
            await server.stop()
            with pytest.raises(GatewayError, match="UpdateState") as lost:
                await ipc.update_state("ERRORED")
            assert lost.value.retryable

    run(body())


def test_update_state_is_recorded_with_history(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (server, ipc):
            await ipc.update_state("RUNNING")
            await server.wait_for_state(COLLECTOR, "RUNNING", DEADLINE_S)
            await ipc.update_state("ERRORED")
            assert server.states[COLLECTOR] == "ERRORED"
            assert server.state_history[COLLECTOR] == ["RUNNING", "ERRORED"]

    run(body())


def test_publish_to_iot_core_reaches_sink_with_qos_1_and_exact_payload(socket_path: Path) -> None:
    received: list[tuple[str, bytes, int]] = []
    payload = bytes(range(256)) * 4  # every byte value: base64 on the wire must not alter a bit

    async def body() -> None:
        sink = lambda topic, data, qos: received.append((topic, data, qos))  # noqa: E731
        async with serving(socket_path, iot_core_sink=sink) as (server, ipc):
            await ipc.publish_to_iot_core("factory/line1/telemetry", payload)
            await _eventually(lambda: bool(received))  # the answer means "spooled"; IoT Core gets it after
            assert received == [("factory/line1/telemetry", payload, 1)]
            assert [(m.component, m.qos) for m in server.published] == [(COLLECTOR, 1)]

    run(body())


async def _eventually(done: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not done():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_publish_to_iot_core_answers_when_spooled_and_a_full_spool_is_a_retryable_error(socket_path: Path) -> None:
    """As the nucleus (MqttProxyIPCAgent): IoT Core failing does not fail the publish, the spooler retries it;
    only a full spool (QoS 1 is never evicted) refuses, as a retryable ServiceError."""
    down = [True]

    def flaky_sink(topic: str, payload: bytes, qos: int) -> None:
        if down[0]:
            raise ConnectionError("broker down")

    async def body() -> None:
        async with serving(socket_path, iot_core_sink=flaky_sink) as (server, ipc):
            server.spool.max_bytes = 4
            await ipc.publish_to_iot_core("factory/t", b"xyz")
            with pytest.raises(DestinationError, match="Message spool is full") as failure:
                await ipc.publish_to_iot_core("factory/t", b"ab")
            assert failure.value.retryable
            assert server.published == []
            down[0] = False
            await _eventually(lambda: bool(server.published))
            assert [m.payload for m in server.published] == [b"xyz"]

    run(body())


ACCESS_CONTROL = {
    COLLECTOR: {
        "aws.greengrass.ipc.mqttproxy": {
            "factoryedge.Collector:mqtt:1": {
                "operations": ["aws.greengrass#PublishToIoTCore"],
                "resources": ["factory/+/telemetry"],
            }
        },
        "aws.greengrass.ipc.pubsub": {
            "factoryedge.Collector:pubsub:1": {
                "operations": ["aws.greengrass#PublishToTopic"],
                "resources": ["local/records/*"],
            }
        },
    }
}


def test_unauthorized_publish_raises_config_error_naming_the_recipe_fix(socket_path: Path) -> None:
    received: list[tuple[str, bytes, int]] = []

    async def body() -> None:
        sink = lambda topic, data, qos: received.append((topic, data, qos))  # noqa: E731
        async with serving(socket_path, access_control=ACCESS_CONTROL, iot_core_sink=sink) as (_, ipc):
            await ipc.publish_to_iot_core("factory/line1/telemetry", b"ok")
            with pytest.raises(ConfigError, match="factory/line1/alarms") as refused:
                await ipc.publish_to_iot_core("factory/line1/alarms", b"no")
            assert "aws.greengrass#PublishToIoTCore for topic factory/line1/alarms" in refused.value.fix
            assert "accessControl.aws.greengrass.ipc.mqttproxy" in refused.value.fix

            with pytest.raises(ConfigError, match="SubscribeToTopic"):
                await ipc.subscribe_to_topic("local/records/+", lambda topic, payload: None)
            await ipc.publish_to_topic("local/records/line1", b"ok")
            with pytest.raises(ConfigError, match="other/topic") as refused:
                await ipc.publish_to_topic("other/topic", b"no")
            assert "accessControl.aws.greengrass.ipc.pubsub" in refused.value.fix
            assert [topic for topic, _, _ in received] == ["factory/line1/telemetry"]

    run(body())


def test_local_pubsub_between_two_components(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path) as (_, collector):
            publisher = await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="token-publisher")
            try:
                messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
                await publisher.subscribe_to_topic("local/records/+", lambda t, p: messages.put_nowait((t, p)))
                await collector.publish_to_topic("local/records/line1", b"\x00batch\xff")
                await collector.publish_to_topic("local/other", b"not for the publisher")
                await collector.publish_to_topic("local/records/line2", b"second")
                assert await next_item(messages) == ("local/records/line1", b"\x00batch\xff")
                assert await next_item(messages) == ("local/records/line2", b"second")
            finally:
                publisher.close()

    run(body())


def test_bad_auth_token_is_refused(socket_path: Path) -> None:
    async def body() -> None:
        async with serving(socket_path):
            with pytest.raises(ConfigError, match="refused the auth token") as refused:
                await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="stolen-token")
            assert "SVCUID" in refused.value.fix

    run(body())


def test_connect_without_server_is_retryable_and_without_env_is_config_error(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    monkeypatch.delenv("SVCUID", raising=False)
    assert not running_under_greengrass()

    async def body() -> None:
        with pytest.raises(GatewayError, match=str(socket_path)) as unreachable:
            await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="token-collector")
        assert unreachable.value.retryable
        with pytest.raises(ConfigError, match="SVCUID"):
            await GreengrassIpc.connect()

    run(body())
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", str(socket_path))
    monkeypatch.setenv("SVCUID", "token-collector")
    assert running_under_greengrass()


def test_frame_round_trip_and_corruption_detected() -> None:
    async def decode(data: bytes) -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    headers: dict[str, HeaderValue] = {":message-type": 0, "flag": True, "name": "operation", "blob": b"\x01\x02"}
    frame = encode_frame(headers, b'{"a": 1}')
    decoded = run(decode(frame))
    assert (decoded.headers, decoded.payload, decoded.json()) == (headers, b'{"a": 1}', {"a": 1})
    corrupted = frame[:-6] + bytes([frame[-6] ^ 0x01]) + frame[-5:]
    with pytest.raises(FrameError, match="message CRC"):
        run(decode(corrupted))


@pytest.mark.parametrize(
    ("pattern", "topic", "glob", "expected"),
    [
        ("factory/+/telemetry", "factory/l1/telemetry", False, True),
        ("factory/+/telemetry", "factory/l1/x/telemetry", False, False),
        ("factory/#", "factory/l1/x", False, True),
        ("factory/l1", "factory/l1/x", False, False),
        ("local/*", "local/a/b", True, True),
        ("local/*", "local/a/b", False, False),
        ("*", "anything/at/all", False, True),
    ],
)
def test_topic_matching(pattern: str, topic: str, glob: bool, expected: bool) -> None:
    assert topic_matches(pattern, topic, glob=glob) is expected


SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:plant/opcua-Qw12Er"
KEY_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:plant/hmac-Zx98Cv"
SECRET_POLICY = {"aws.greengrass.SecretManager": {"c:secrets:1": {
    "operations": ["aws.greengrass#GetSecretValue"], "resources": ["arn:aws:secretsmanager:eu-west-1:123456789012:"
                                                                   "secret:plant/*"]}}}


def test_get_secret_value_text_binary_by_name_and_version(socket_path: Path) -> None:
    async def body() -> None:
        secrets = {SECRET_ARN: "s3cr3t-text", KEY_ARN: b"\x00\xffkey"}
        async with serving(socket_path, secrets=secrets, access_control={COLLECTOR: SECRET_POLICY}) as (_, ipc):
            text = await ipc.get_secret_value(SECRET_ARN)
            assert (text.arn, text.text, text.binary, text.version_stages) == (SECRET_ARN, "s3cr3t-text", None,
                                                                               ("AWSCURRENT",))
            assert "s3cr3t-text" not in repr(text)
            binary = await ipc.get_secret_value(KEY_ARN)
            assert binary.binary == b"\x00\xffkey" and binary.text is None
            by_name = await ipc.get_secret_value("plant/opcua")  # a name maps to its configured ARN
            assert by_name.arn == SECRET_ARN and by_name.version_id == text.version_id
            assert (await ipc.get_secret_value(SECRET_ARN, version_id=text.version_id)).text == "s3cr3t-text"
            with pytest.raises(ConfigError, match="AWSPREVIOUS"):
                await ipc.get_secret_value(SECRET_ARN, version_stage="AWSPREVIOUS")

    run(body())


def test_get_secret_value_refused_without_policy_and_unknown_secret_named(socket_path: Path) -> None:
    async def body() -> None:
        unknown = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:plant/other-Aa11Bb"
        # COLLECTOR has no policies at all: for secrets the stand-in is as strict as the nucleus
        async with serving(socket_path, secrets={SECRET_ARN: "s3cr3t-text"}) as (server, ipc):
            with pytest.raises(ConfigError, match="not authorized") as refused:
                await ipc.get_secret_value(SECRET_ARN)
            assert "aws.greengrass.SecretManager" in refused.value.fix and SECRET_ARN in str(refused.value)
            server.access_control[COLLECTOR] = SECRET_POLICY
            with pytest.raises(ConfigError, match="not on this core") as missing:
                await ipc.get_secret_value(unknown)
            assert "cloudSecrets" in missing.value.fix
            with pytest.raises(ConfigError, match="Secret not configured plant/nothing"):
                await ipc.get_secret_value("plant/nothing")

    run(body())
