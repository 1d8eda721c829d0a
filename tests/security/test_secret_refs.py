"""Secrets in deployments (issue 12 item 6): a password written into a Greengrass deployment is readable by every
component on the core; a ``secretsmanager:<ARN>`` reference is fetched with GetSecretValue under the component's own
accessControl. Real awsiotsdk client against the IPC stand-in; the real publisher against mosquitto with a password."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devkit.ipc_server import SECRET_MANAGER, IpcServer
from devkit.peers import ROOT, Proc, free_port, make_pki, mosquitto_binary, port_open, start, wait_for
from gateway.componentconfig import PublisherConfig
from gateway.config import load_file
from gateway.errors import ConfigError
from gateway.ipc import GreengrassIpc
from gateway.ipc_config import connect_deployment
from gateway.record import make_record
from gateway.secretrefs import refuse_outside_greengrass
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

PUBLISHER, COLLECTOR = "factoryedge.Publisher", "factoryedge.OpcUaCollector"
TOKENS = {"tok-pub": PUBLISHER, "tok-col": COLLECTOR}
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:factory/broker-Ab12Cd"
OTHER_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:factory/broker2-Xy34Zw"
PASSWORD = "Pw-5ecret-for-line-7"  # looked for in logs, status files and errors: it must never appear
OTHER_PASSWORD = "Pw-rotated-for-line-7"
SECRETS: dict[str, str | bytes] = {ARN: json.dumps({"username": "gw", "password": PASSWORD}),
                                   OTHER_ARN: OTHER_PASSWORD}
REF = f"secretsmanager:{ARN}#password"
POLICY = {SECRET_MANAGER: {f"{PUBLISHER}:secrets:1": {
    "operations": ["aws.greengrass#GetSecretValue"], "resources": [ARN, OTHER_ARN]}}}


@dataclass
class Broker:
    port: int
    ca: Path


# for configurations that are only read, never connected (the CA file must exist: it is checked at validation)
UNUSED = Broker(1883, Path("/etc/ssl/certs/ca-certificates.crt"))

def _publisher_config(store: Path, broker: Broker, password: str) -> dict[str, Any]:
    mqtt_destination = {
        "type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": broker.port, "tls": {"ca_file": str(broker.ca)},
        "username": "gw", "password": password, "client_id": "gw-publisher", "route": {"streams": ["values"]},
        "retry_min_s": 0.2, "retry_max_s": 1}
    return {"store": {"kind": "embedded", "path": str(store)}, "status_interval_s": 0.2,
            "destinations": [mqtt_destination]}


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Short on purpose: Unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ipc") as folder:
        yield Path(folder) / "ipc.sock"


@pytest.fixture
def nucleus(socket_path: Path) -> Iterator[tuple[IpcServer, asyncio.AbstractEventLoop]]:
    """The IPC stand-in on a loop of its own (components under test run their own loops or processes)."""
    loop = asyncio.new_event_loop()
    server = IpcServer(socket_path, TOKENS, secrets=SECRETS,
                       access_control={PUBLISHER: POLICY, COLLECTOR: {}})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield server, loop
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _on(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> Any:
    async def call() -> Any:
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto over TLS refusing anonymous clients: user gw, password PASSWORD."""
    folder = tmp_path_factory.mktemp("mosquitto-pw")
    pki = make_pki(folder / "pki")
    passwords = folder / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gw", PASSWORD], check=True, capture_output=True)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"user root\npersistence false\nlog_dest stdout\nlistener {port} 127.0.0.1\n"
                    f"allow_anonymous false\npassword_file {passwords}\ncafile {pki.ca}\n"
                    f"certfile {pki.server_cert}\nkeyfile {pki.server_key}\n")
    proc: Proc = start([mosquitto_binary(), "-c", str(conf)], folder / "mosquitto.log")
    try:
        wait_for(lambda: port_open(port), 10, "mosquitto to listen")
        yield Broker(port, pki.ca)
    finally:
        proc.stop()


def test_plain_password_in_a_deployment_is_readable_by_another_component_a_reference_is_not(
    nucleus: tuple[IpcServer, asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    server, loop = nucleus
    _on(loop, server.set_configuration, PUBLISHER, _publisher_config(tmp_path, UNUSED, PASSWORD))

    async def other_component_reads(path: list[str]) -> Any:
        ipc = await GreengrassIpc.connect(socket_path=server.socket_path, auth_token="tok-col")
        try:
            return await ipc.get_configuration(path, component=PUBLISHER)
        finally:
            ipc.close()

    # The defect: GetConfiguration of another component needs no authorisation, on the nucleus as here.
    path = ["destinations"]
    assert PASSWORD in json.dumps(asyncio.run(other_component_reads(path)))

    _on(loop, server.set_configuration, PUBLISHER, _publisher_config(tmp_path, UNUSED, REF))
    seen = json.dumps(asyncio.run(other_component_reads(path)))
    assert ARN in seen and PASSWORD not in seen

    async def other_component_asks_for_the_secret() -> None:
        ipc = await GreengrassIpc.connect(socket_path=server.socket_path, auth_token="tok-col")
        try:
            await ipc.get_secret_value(ARN)
        finally:
            ipc.close()

    with pytest.raises(ConfigError, match="not authorized") as refused:
        asyncio.run(other_component_asks_for_the_secret())
    assert SECRET_MANAGER in refused.value.fix and PASSWORD not in str(refused.value)


def _run_publisher(socket: str, token: str, log: Path) -> Proc:
    env = {"AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": socket, "SVCUID": token,
           "PYTHONPATH": str(ROOT), "STREAM_MANAGER_SERVER_PORT": str(free_port())}
    # the working directory is the component's (its work folder under Greengrass): a store given as a relative path
    # or the default one lands there, not in the checkout
    return start([sys.executable, str(ROOT / "components" / "publisher" / "main.py")], log, env=env, cwd=log.parent)


def test_mqtt_password_reference_is_fetched_and_used_and_never_shown(
    nucleus: tuple[IpcServer, asyncio.AbstractEventLoop], broker: Broker, tmp_path: Path
) -> None:
    server, loop = nucleus
    store_path = tmp_path / "store"
    store = EmbeddedStore(store_path)
    store.create_stream(StreamSpec(name="values"))
    RecordWriter(store, "values").write([make_record("plc", f"line/t{i}", float(i), seq=i) for i in range(20)])
    store.close()
    _on(loop, server.set_configuration, PUBLISHER,
        _publisher_config(store_path, broker, REF))

    received: list[bytes] = []
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-secret-sub")
    subscriber.username_pw_set("gw", PASSWORD)
    subscriber.tls_set(ca_certs=str(broker.ca))
    subscriber.on_message = lambda client, userdata, message: received.append(bytes(message.payload))
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe("factoryedge/#", qos=1)
    subscriber.loop_start()
    log = tmp_path / "publisher.log"
    proc = _run_publisher(server.socket_path, "tok-pub", log)
    try:
        try:
            wait_for(lambda: sum(len(json.loads(p)["records"]) for p in list(received)) >= 20, 30,
                     "records through the password-protected broker")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; publisher log:\n{log.read_text(errors='replace')}") from None
        assert server.states.get(PUBLISHER) == "RUNNING"
    finally:
        proc.stop()
        subscriber.loop_stop()
        subscriber.disconnect()
    written = [log, *store_path.rglob("*.json")]
    for path in written:
        assert PASSWORD not in path.read_text(errors="replace"), path


def test_component_without_the_policy_gets_one_clear_line_per_field(
    nucleus: tuple[IpcServer, asyncio.AbstractEventLoop], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, loop = nucleus
    server.access_control[PUBLISHER] = {}  # a recipe without the SecretManager policy
    _on(loop, server.set_configuration, PUBLISHER, _publisher_config(tmp_path, UNUSED, REF))
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", server.socket_path)
    monkeypatch.setenv("SVCUID", "tok-pub")

    async def start() -> PublisherConfig | None:
        ipc, config = await connect_deployment(PUBLISHER, PublisherConfig, lambda new: None, lambda: None)
        ipc.close()
        return config

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(start()) is None  # the runtime reports ERRORED and waits for a deployment
    lines = [line for line in caplog.text.splitlines() if "destinations.0.password" in line]
    assert len(lines) == 1, caplog.text
    assert ARN in lines[0] and "not authorized" in lines[0]
    assert "accessControl" in lines[0] and "aws.greengrass#GetSecretValue" in lines[0] and "cloudSecrets" in lines[0]
    assert PASSWORD not in caplog.text


def test_json_key_resolved_at_start_and_again_at_each_update_malformed_reference_rejected(
    nucleus: tuple[IpcServer, asyncio.AbstractEventLoop], broker: Broker, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the broker is real because deployment validation probes the endpoints a deployment adds
    server, loop = nucleus
    first = _publisher_config(tmp_path, broker, REF)
    _on(loop, server.set_configuration, PUBLISHER, first)
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", server.socket_path)
    monkeypatch.setenv("SVCUID", "tok-pub")

    async def scenario() -> None:
        accepted: asyncio.Queue[PublisherConfig] = asyncio.Queue()
        ipc, config = await connect_deployment(PUBLISHER, PublisherConfig, accepted.put_nowait, lambda: None)
        try:
            assert config is not None
            password = config.destinations[0].password  # type: ignore[union-attr]
            assert password is not None and password.get_secret_value() == PASSWORD
            assert PASSWORD not in repr(config) and PASSWORD not in config.model_dump_json()

            bad = _publisher_config(tmp_path, broker, "secretsmanager:factory/broker")
            deploy = asyncio.run_coroutine_threadsafe(server.deploy_configuration(PUBLISHER, bad, 10), loop)
            ok, message = await asyncio.wrap_future(deploy)
            assert not ok and "destinations.0.password" in message and "full ARN" in message

            rotated = _publisher_config(tmp_path, broker, f"secretsmanager:{OTHER_ARN}")
            deploy = asyncio.run_coroutine_threadsafe(server.deploy_configuration(PUBLISHER, rotated, 10), loop)
            ok, _ = await asyncio.wrap_future(deploy)
            assert ok
            new = await asyncio.wait_for(accepted.get(), 10)
            password = new.destinations[0].password  # type: ignore[union-attr]
            assert password is not None and password.get_secret_value() == OTHER_PASSWORD
        finally:
            ipc.close()

    asyncio.run(scenario())


def test_reference_outside_greengrass_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "publisher.json"
    path.write_text(json.dumps(_publisher_config(tmp_path, UNUSED, REF)))
    with pytest.raises(ConfigError) as refused:
        refuse_outside_greengrass(load_file(PublisherConfig, path), str(path))
    assert len(refused.value.problems) == 1
    line = refused.value.problems[0]
    assert line.startswith("destinations.0.password:") and ARN in line and "Greengrass" in line
    plain = load_file(PublisherConfig, _write(tmp_path / "plain.json", _publisher_config(tmp_path, UNUSED, PASSWORD)))
    assert refuse_outside_greengrass(plain, "plain.json") is plain
    # the component itself (runtime.component_main) refuses to start on it, instead of sending the reference as
    # the password
    env = {k: v for k, v in os.environ.items() if k != "SVCUID"}
    main = ROOT / "components" / "publisher" / "main.py"
    started = subprocess.run([sys.executable, str(main), "--config", str(path)],
                             env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2 and "destinations.0.password" in started.stderr and ARN in started.stderr


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path
