"""One harness per destination type: its real peer (or wire fake), and the faults the conformance suite needs.

Every member of the union :data:`gateway.componentconfig.DestinationConfig` has a harness here (a test fails when
one is missing). A harness is built per test and starts its peer only when asked:

- ``config(**settings)``: a configuration that works against the peer; ``delivered()`` counts the records the peer
  holds; ``running()`` wraps a test's event loop (the IPC stand-in lives on it).
- ``down()``: a configuration whose peer refuses connections (or whose folder cannot be written).
- ``fail_next(n)`` / ``heal()``: the next ``n`` entries fail for now, per entry (``partial_skip`` says why a type
  cannot express it); ``poison(record)`` is a record it can never take (``poison_skip``).
- ``hung()`` / ``hang(dest)`` / ``holds_request()`` / ``release()``: a link that goes silent (devkit.faultproxy's
  blackhole; for IoT Core a nucleus socket that never answers), whether our request is stuck in it, and letting
  abandoned threads end after the test (``hang_skip``).
- ``bodies()``: the JSON documents the peer holds, each ``{"records": [...]}`` with its ``meta`` header when the
  type sends one (a file: one document of all its lines; ``bodies_skip`` for types that send no JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devkit.faultproxy import FaultProxy
from devkit.ipc_server import MQTT_PROXY, IpcServer
from devkit.kinesis_fault import KinesisFaultProxy
from devkit.kinesis_peer import TEST_CREDENTIALS, Kinesalite, create_stream, gateway_records, read_all
from devkit.peers import Mosquitto, RecordSubscriber, free_port
from devkit.sitewise_fake import SiteWiseFake
from gateway.destinations.aws import AwsSettings
from gateway.destinations.base import Destination, Route, SendResult
from gateway.destinations.file import FileConfig
from gateway.destinations.iotcore import IotCoreConfig
from gateway.destinations.kinesis import KinesisConfig
from gateway.destinations.mqtt import MqttConfig
from gateway.destinations.sitewise import SiteWiseConfig
from gateway.errors import GatewayError
from gateway.ipc_connection import SOCKET_ENV, TOKEN_ENV
from gateway.plugin import Plugin
from gateway.record import Record, make_record
from tests.support.publisher import read_jsonl

PUBLISHER = "factoryedge.Publisher"
ROUTE = Route(streams=["values"])
FAST = {"route": ROUTE, "retry_min_s": 0.02, "retry_max_s": 0.1}
#: Timeouts of a destination talking to a hung peer: far above the close deadline the suite gives (1 s), and short:
#: an abandoned call still holds the test process's exit until its own timeout (executor threads are joined at exit).
HUNG_TIMEOUT_S = 6.0
TAGS = [f"/plant/line1/t{i}" for i in range(5)]
TEXT_TAG = "/plant/line1/text"  # a STRING property at SiteWise (the other tags are DOUBLE)
DestinationPlugin = Plugin[Destination]


def records(n: int, start: int = 0) -> list[Record]:
    """``n`` DOUBLE values of two sources (plc-a, plc-b) over five tags, stamped within the last second."""
    now = time.time_ns()
    return [make_record("plc-a" if i % 2 else "plc-b", TAGS[i % len(TAGS)], float(i), seq=i,
                        source_ts_ns=now - (start + n - i) * 1000) for i in range(start, start + n)]


def too_large(seq: int) -> Record:
    """A record no destination below can ever take: a 2000-character string (limits are set to 1 KiB)."""
    return make_record("plc-a", TAGS[0], "x" * 2000, seq=seq, source_ts_ns=time.time_ns())


def held_bytes(port: int) -> int:
    """Bytes the kernel holds unread on 127.0.0.1:``port`` (a blackholed fault proxy): our request is stuck there."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.split(":")[1], 16) == port and state != "0A":  # 0A: the listening socket itself
            total += int(queues.split(":")[1], 16)
    return total


class Harness:
    """What every type shares; subclasses fill in their peer."""

    type = ""
    minimal: dict[str, Any] = {}  # the smallest valid configuration besides name
    partial_skip = ""
    poison_skip = ""
    hang_skip = ""
    bodies_skip = ""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        self.request, self.tmp, self.env = request, tmp, env
        self.proxy: FaultProxy | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield

    def config(self, **settings: Any) -> DestinationPlugin:
        raise NotImplementedError

    def delivered(self) -> int:
        raise NotImplementedError

    def down(self) -> DestinationPlugin:
        raise NotImplementedError

    def fail_next(self, n: int) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        pass

    def poison(self, seq: int) -> Record:
        return too_large(seq)

    def bodies(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def hung(self) -> DestinationPlugin:
        raise NotImplementedError

    async def hang(self, dest: Destination) -> None:
        assert self.proxy is not None
        self.proxy.blackhole()

    def holds_request(self) -> bool:
        return self.proxy is not None and held_bytes(self.proxy.port) > 0

    def release(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()  # resets the held connections: abandoned calls end now

    def _proxy(self, port: int) -> int:
        self.proxy = FaultProxy(port).start()
        return self.proxy.port


class FileHarness(Harness):
    type = "file"
    partial_skip = "a write is all or nothing: one cut short is truncated and the batch is retried whole"
    poison_skip = "a file takes every record"
    hang_skip = ("no local file system can be made to hang here (a FIFO fails the destination's seek at once); its "
                 "close waits for a write in flight off the loop with the same finish_within as MQTT's")

    def config(self, **settings: Any) -> DestinationPlugin:
        return FileConfig(name="conformance", path=str(self.tmp / "out" / "records.jsonl"), **FAST, **settings)

    def delivered(self) -> int:
        return len(read_jsonl(self.tmp / "out" / "records.jsonl"))

    def bodies(self) -> list[dict[str, Any]]:
        return [{"records": read_jsonl(self.tmp / "out" / "records.jsonl")}]

    def down(self) -> DestinationPlugin:
        blocker = self.tmp / "a-file-not-a-folder"
        blocker.write_text("x")
        return FileConfig(name="conformance", path=str(blocker / "records.jsonl"), **FAST)


class MqttHarness(Harness):
    type = "mqtt"
    minimal = {"host": "127.0.0.1"}
    partial_skip = ("MQTT 3.1.1 acknowledges every QoS 1 PUBLISH (a broker drops what it refuses): a send "
                    "succeeds or fails as a whole")

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        super().__init__(request, tmp, env)
        self.prefix = f"conformance-{uuid.uuid4().hex[:8]}"
        self._broker: Mosquitto | None = None
        self._subscriber: RecordSubscriber | None = None

    @property
    def broker(self) -> Mosquitto:
        if self._broker is None:
            self._broker = self.request.getfixturevalue("mosquitto")
            self._subscriber = RecordSubscriber(self._broker, f"{self.prefix}/#", f"{self.prefix}-sub")
            self.request.addfinalizer(self._subscriber.stop)
        return self._broker

    def config(self, port: int | None = None, **settings: Any) -> DestinationPlugin:
        return MqttConfig(name="conformance", host="127.0.0.1", port=port or self.broker.port,
                          client_id=f"{self.prefix}-{uuid.uuid4().hex[:6]}", topic=f"{self.prefix}/{{source}}/{{kind}}",
                          max_message_bytes=1024, **FAST, **settings)

    def delivered(self) -> int:
        return len(list(self._subscriber.received)) if self._subscriber else 0

    def bodies(self) -> list[dict[str, Any]]:
        return list(self._subscriber.bodies) if self._subscriber else []

    def down(self) -> DestinationPlugin:
        return MqttConfig(name="conformance", host="127.0.0.1", port=free_port(), **FAST)

    def hung(self) -> DestinationPlugin:
        return self.config(port=self._proxy(self.broker.port), ack_timeout_s=HUNG_TIMEOUT_S)

    async def hang(self, dest: Destination) -> None:
        # the session is up before the link goes silent: the PUBLISH then waits for a PUBACK that never comes
        await send_retrying(dest, records(1))
        await super().hang(dest)


class IotCoreHarness(Harness):
    type = "iotcore"
    allow_all = {MQTT_PROXY: {"factoryedge.Publisher:mqttproxy:1": {
        "operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["factoryedge/+/telemetry/#"]}}}
    allow_plc_a = {MQTT_PROXY: {"factoryedge.Publisher:mqttproxy:1": {
        "operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["factoryedge/+/telemetry/plc-a/#"]}}}

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        super().__init__(request, tmp, env)
        folder = tempfile.mkdtemp(prefix="ipc")  # Unix socket paths are limited to 107 bytes
        request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
        self.socket = Path(folder) / "ipc.sock"
        env.setenv(SOCKET_ENV, str(self.socket))
        env.setenv(TOKEN_ENV, "token-publisher")
        env.setenv("AWS_IOT_THING_NAME", "line1-gw")
        self.server: IpcServer | None = None
        self._silent: socket.socket | None = None
        self._held = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.server = IpcServer(self.socket, {"token-publisher": PUBLISHER},
                                access_control={PUBLISHER: self.allow_all})
        await self.server.start()
        try:
            yield
        finally:
            await self.server.stop()
            self.socket.unlink(missing_ok=True)

    def config(self, **settings: Any) -> DestinationPlugin:
        return IotCoreConfig(name="conformance", max_message_bytes=1024, max_messages_per_s=10_000,
                             max_bytes_per_s=100e6, **FAST, **settings)

    def delivered(self) -> int:
        import json

        return sum(len(json.loads(m.payload)["records"]) for m in self.server.published) if self.server else 0

    def bodies(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(m.payload) for m in self.server.published] if self.server else []

    def down(self) -> DestinationPlugin:
        self.env.setenv(SOCKET_ENV, str(self.socket.with_name("nobody-listens.sock")))
        return self.config(request_timeout_s=2.0)

    def fail_next(self, n: int) -> None:
        # the nucleus refuses one of the two sources' topics: that topic's records wait, the other's are sent
        assert self.server is not None
        self.server.access_control = {PUBLISHER: self.allow_plc_a}

    def heal(self) -> None:
        assert self.server is not None
        self.server.access_control = {PUBLISHER: self.allow_all}

    def hung(self) -> DestinationPlugin:
        # a nucleus that accepts the connection and never answers
        path = self.socket.with_name("silent.sock")
        self._silent = socket.socket(socket.AF_UNIX)
        self._silent.bind(str(path))
        self._silent.listen(4)
        self._silent.setblocking(False)
        self.env.setenv(SOCKET_ENV, str(path))
        return self.config(request_timeout_s=HUNG_TIMEOUT_S)

    async def hang(self, dest: Destination) -> None:
        pass

    def holds_request(self) -> bool:
        assert self._silent is not None
        with contextlib.suppress(BlockingIOError):
            conn, _ = self._silent.accept()
            self.request.addfinalizer(conn.close)
            self._held += 1
        return self._held > 0

    def release(self) -> None:
        if self._silent is not None:
            self._silent.close()


class _AwsHarness(Harness):
    """SiteWise and Kinesis: credentials from the environment, endpoints on 127.0.0.1 (plain HTTP, allowed)."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        super().__init__(request, tmp, env)
        for key, value in TEST_CREDENTIALS.items():
            env.setenv(key, value)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
        env.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))

    @staticmethod
    def aws(endpoint: str, timeout_s: float = 5.0) -> AwsSettings:
        return AwsSettings(endpoint_url=endpoint, allow_insecure_endpoint=True, connect_timeout_s=timeout_s,
                           read_timeout_s=timeout_s)


class SiteWiseHarness(_AwsHarness):
    type = "sitewise"
    bodies_skip = "SiteWise stores values, not JSON documents (its values are read from the fake)"

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        super().__init__(request, tmp, env)
        self._fake: SiteWiseFake | None = None

    @property
    def fake(self) -> SiteWiseFake:
        if self._fake is None:
            self._fake = SiteWiseFake({**dict.fromkeys(TAGS, "DOUBLE"), TEXT_TAG: "STRING"}).start()
            self.request.addfinalizer(self._fake.stop)
        return self._fake

    def config(self, endpoint: str | None = None, **settings: Any) -> DestinationPlugin:
        return SiteWiseConfig(name="conformance", aws=self.aws(endpoint or self.fake.endpoint_url), **FAST, **settings)

    def delivered(self) -> int:
        return self._fake.value_count() if self._fake else 0

    def down(self) -> DestinationPlugin:
        return self.config(endpoint=f"http://127.0.0.1:{free_port()}")

    def fail_next(self, n: int) -> None:
        self.fake.inject("InternalFailureException", n)

    def hung(self) -> DestinationPlugin:
        port = self._proxy(self.fake.port)
        return SiteWiseConfig(name="conformance", aws=self.aws(f"http://127.0.0.1:{port}", HUNG_TIMEOUT_S), **FAST)


class KinesisHarness(_AwsHarness):
    type = "kinesis"
    minimal = {"stream_name": "s"}

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, env: pytest.MonkeyPatch) -> None:
        super().__init__(request, tmp, env)
        self.stream = f"conformance-{uuid.uuid4().hex[:8]}"
        self._peer: Kinesalite | None = None
        self._faults: KinesisFaultProxy | None = None

    @property
    def peer(self) -> Kinesalite:
        if self._peer is None:
            self._peer = self.request.getfixturevalue("kinesalite")
            create_stream(self._peer.endpoint_url, self.stream, shards=2)
        return self._peer

    @property
    def faults(self) -> KinesisFaultProxy:
        if self._faults is None:
            self._faults = KinesisFaultProxy(self.peer.port).start()
            self.request.addfinalizer(self._faults.stop)
        return self._faults

    def config(self, endpoint: str | None = None, **settings: Any) -> DestinationPlugin:
        # through the fault proxy, which forwards everything until told to fail records
        return KinesisConfig(name="conformance", stream_name=self.stream, max_record_bytes=1024,
                             aws=self.aws(endpoint or self.faults.endpoint_url), **FAST, **settings)

    def delivered(self) -> int:
        return len(gateway_records(self.peer.endpoint_url, self.stream)) if self._peer else 0

    def bodies(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(data) for _, data in read_all(self.peer.endpoint_url, self.stream)] if self._peer else []

    def down(self) -> DestinationPlugin:
        return KinesisConfig(name="conformance", stream_name=self.stream,
                             aws=self.aws(f"http://127.0.0.1:{free_port()}"), **FAST)

    def fail_next(self, n: int) -> None:
        self.faults.fail_records(n, "ProvisionedThroughputExceededException")

    def hung(self) -> DestinationPlugin:
        port = self._proxy(self.peer.port)
        return KinesisConfig(name="conformance", stream_name=self.stream,
                             aws=self.aws(f"http://127.0.0.1:{port}", HUNG_TIMEOUT_S), **FAST)


HARNESSES: dict[str, type[Harness]] = {
    h.type: h for h in (FileHarness, MqttHarness, IotCoreHarness, SiteWiseHarness, KinesisHarness)
}


async def send_retrying(dest: Destination, batch: list[Record], deadline_s: float = 30.0) -> SendResult:
    """Send ``batch`` as the publisher does: a retryable error means nothing is known to have arrived (an MQTT
    session still coming up on a loaded machine: CI saw a CONNACK later than the destination's 5 s first wait), so
    it is sent again until a deadline; any other outcome is the answer."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await dest.send(batch)
        except GatewayError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # the publisher's backoff, shortened: not a synchronisation


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` off the loop (devkit.peers.wait_for) while the loop keeps running the destination."""
    from devkit.peers import wait_for

    await asyncio.to_thread(wait_for, condition, timeout_s, what)
