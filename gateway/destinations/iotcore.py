"""IoT Core destination under Greengrass: ``PublishToIoTCore`` over the nucleus' IPC, QoS 1.

Records are packed into ``{"records": [...]}`` messages of at most 128 KB (IoT Core's message limit) on topics
from a template. Messages of one topic are published one after the other (their order is the records' order);
different topics go concurrently. A send returns only when the nucleus accepted each message; a message that
failed is resent with the rest of its topic, the others are not.

**What the nucleus' answer means** (aws-greengrass-nucleus source): ``MqttProxyIPCAgent`` answers PublishToIoTCore
once ``MqttClient.publish`` has put the message in its spooler (``Spool.addMessage``), not on IoT Core's PUBACK, and
the default spooler (``SpoolerStorageType.Memory``, ``mqtt.spooler.maxSizeInBytes`` 2.5 MB) dies with the nucleus
process. So with a memory spooler this destination does not let the publisher commit a position on that answer:
a message counts as delivered only once at least ``spool window`` bytes of our later messages were accepted after
it (the spool window is the spool's size plus ``mqtt.maxInFlightPublishes`` full messages). The spool never holds
more than its size (``Spool.queueCapacityCheck``; QoS 1 is never evicted, "Message spool is full" instead) and
sends oldest first (``Spool.popId``), so by then the message has left the spooler: acknowledged by IoT Core, or
dropped by the nucleus itself after ``mqtt.maxPublishRetry`` failed attempts. Until then its records stay
uncommitted in the stream, and they are sent again when the publisher restarts (a nucleus restart restarts it) or
when its IPC connection had to be opened again (the nucleus restarted under it). With ``spooler: disk`` and the
nucleus configured with ``mqtt.spooler.storageType: Disk`` (component ``aws.greengrass.DiskSpooler``), the spool
survives restarts and positions are committed on the answer. The nucleus offers no IPC operation that reports its
MQTT connection state or PUBACKs (``MqttProxyIPCService`` registers only PublishToIoTCore and SubscribeToIoTCore).

Rate: every ``iotcore`` destination of the publisher shares one budget (:data:`PUBLISHER_BUDGET`) and the anomaly
detector's alarm events another (:data:`DETECTOR_BUDGET`): together 75 % of IoT Core's per-connection quota, the
rest left to the nucleus (its own traffic shares the one connection) and to bursts. A destination that sets
``max_messages_per_s`` / ``max_bytes_per_s`` gets a bucket of its own instead.

Outside Greengrass, use the ``mqtt`` destination with mutual TLS to the account's IoT Core endpoint instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from gateway.destinations.base import DestinationConfigBase, SendResult
from gateway.destinations.payload import RECORD_FIELDS, MetaCache, pack_by_topic, template_problem
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import ConfigError, DestinationError, GatewayError
from gateway.record import Record

if TYPE_CHECKING:
    from gateway.ipc import GreengrassIpc

log = logging.getLogger(__name__)

IOT_CORE_MAX_MESSAGE = 128 * 1024
#: IoT Core's quota per connection: 100 publishes and 512 KB a second (AWS IoT Core service quotas).
IOT_CORE_QUOTA = (100.0, 512 * 1024.0)
#: The device-wide budget, 75 % of the quota, in fixed shares: (messages/s, bytes/s).
PUBLISHER_BUDGET = (65.0, 336 * 1024.0)  # every iotcore destination of the publisher, together
DETECTOR_BUDGET = (10.0, 48 * 1024.0)  # the anomaly detector's alarm events
NUCLEUS = "aws.greengrass.Nucleus"
#: ``Spool.DEFAULT_SPOOL_MAX_MESSAGE_QUEUE_SIZE_IN_BYTES`` and ``MqttClient.DEFAULT_MAX_IN_FLIGHT_PUBLISHES``.
NUCLEUS_SPOOL_BYTES = int(2.5 * 1024 * 1024)
NUCLEUS_IN_FLIGHT = 5
IOT_CORE_MAX_TOPIC_BYTES = 256
IOT_CORE_MAX_SLASHES = 7


class IotCoreConfig(DestinationConfigBase):
    """Publish records to AWS IoT Core through Greengrass IPC (QoS 1)."""

    type: Literal["iotcore"] = Field(default="iotcore", description="Destination type.")
    # topic_vars comes before topic: its validator reads them (pydantic validates in field order)
    topic_vars: dict[str, str] = Field(default_factory=dict, description="Extra template fields, e.g. site, line.")
    topic: str = Field(
        default="factoryedge/{thing}/telemetry/{source}/{kind}",
        description="Topic template; fields {thing} (the Greengrass thing name), {source}, {kind}, {tag}, {group} "
        "(the tag's parent path) and any key of topic_vars (e.g. {site}, {line}). The recipe's accessControl "
        "must allow the resulting topics for aws.greengrass#PublishToIoTCore.",
    )
    max_message_bytes: int = Field(
        default=IOT_CORE_MAX_MESSAGE, ge=1024, le=IOT_CORE_MAX_MESSAGE,
        description="Largest message; IoT Core refuses more than 128 KB.",
    )
    max_messages_per_s: float | None = Field(
        default=None, gt=0, description="Publishes per second for this destination alone; null: share the "
        "publisher's budget (65/s for all iotcore destinations; IoT Core allows 100 per connection, shared by "
        "the device).",
    )
    max_bytes_per_s: float | None = Field(
        default=None, gt=0, description="Bytes per second for this destination alone; null: share the "
        "publisher's budget (336 KB/s for all iotcore destinations; IoT Core allows 512 KB/s per connection).",
    )
    spooler: Literal["memory", "disk"] = Field(
        default="memory", description="The nucleus' MQTT spooler: memory (its default, lost at a nucleus restart: "
        "positions are committed only once the spool window has passed) or disk (mqtt.spooler.storageType: Disk "
        "with aws.greengrass.DiskSpooler deployed: committed on the nucleus' answer; checked at start, memory "
        "rules apply when the nucleus says otherwise).",
    )
    spool_bytes: int | None = Field(
        default=None, ge=1024, description="Size of the nucleus' spool (mqtt.spooler.maxSizeInBytes); null: read "
        "from the nucleus' configuration at start (2.5 MB when unset there).",
    )
    concurrent_topics: int = Field(default=8, ge=1, le=64, description="Topics published concurrently.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="How long one publish may take.")

    @field_validator("topic")
    @classmethod
    def _topic_fields_exist(cls, topic: str, info: ValidationInfo) -> str:
        if "topic_vars" in info.data:  # else topic_vars itself is refused, one line is enough
            problem = template_problem(topic, [*RECORD_FIELDS, "thing", *info.data["topic_vars"]])
            if problem:
                raise ValueError(problem)
        return topic

    def build(self) -> IotCoreDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return IotCoreDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of the topic template and Greengrass IPC (see :mod:`gateway.plugin`)."""
        return await diagnose(self, timeout_s)


def check_iot_topic(topic: str) -> str | None:
    """Why IoT Core would refuse ``topic`` (wildcards, reserved $ prefix, > 256 bytes, > 7 slashes), or None."""
    if not topic or "+" in topic or "#" in topic:
        return f"topic {topic!r} is empty or holds a wildcard (+ #): fix the topic template or the tag names"
    if topic.startswith("$"):
        return f"topic {topic!r} starts with $, which IoT Core reserves: fix the topic template"
    if len(topic.encode()) > IOT_CORE_MAX_TOPIC_BYTES:
        return f"topic of {len(topic.encode())} bytes exceeds IoT Core's 256: shorten the template or use {{group}}"
    if topic.count("/") > IOT_CORE_MAX_SLASHES:
        return (f"topic {topic!r} has {topic.count('/')} slashes, IoT Core allows 7: use fewer levels "
                "(e.g. {group} instead of {tag})")
    return None


class RateLimiter:
    """Token buckets over messages and bytes; ``acquire`` waits until both allow the next message."""

    def __init__(self, messages_per_s: float, bytes_per_s: float) -> None:
        self._rates = (messages_per_s, bytes_per_s)
        # A one-second burst, and room for one full-size message even when the byte rate is lower.
        self._caps = (max(1.0, messages_per_s), max(bytes_per_s, float(IOT_CORE_MAX_MESSAGE)))
        self._tokens = list(self._caps)
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, size: int) -> None:
        async with self._lock:  # FIFO: publishes take turns in the order they asked
            while True:
                now = time.monotonic()
                for i in (0, 1):
                    self._tokens[i] = min(self._caps[i], self._tokens[i] + (now - self._at) * self._rates[i])
                self._at = now
                need = (1.0, float(min(size, self._caps[1])))
                short = max((need[i] - self._tokens[i]) / self._rates[i] for i in (0, 1))
                if short <= 0:
                    self._tokens[0] -= need[0]
                    self._tokens[1] -= need[1]
                    return
                await asyncio.sleep(short)  # rate limiting is waiting by design, not synchronisation


_shared: dict[int, RateLimiter] = {}


def publisher_limiter() -> RateLimiter:
    """The one bucket every iotcore destination of this process (the publisher) shares, per event loop."""
    loop = id(asyncio.get_running_loop())
    if loop not in _shared:
        _shared.clear()  # a new loop (tests run several): the old one is gone
        _shared[loop] = RateLimiter(*PUBLISHER_BUDGET)
    return _shared[loop]


def thing_name() -> str:
    return os.environ.get("AWS_IOT_THING_NAME", "local")


class IotCoreDestination:
    def __init__(self, cfg: IotCoreConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._ipc: GreengrassIpc | None = None
        self._connecting = asyncio.Lock()
        self._own_limiter = RateLimiter(cfg.max_messages_per_s or PUBLISHER_BUDGET[0],
                                        cfg.max_bytes_per_s or PUBLISHER_BUDGET[1]) \
            if cfg.max_messages_per_s or cfg.max_bytes_per_s else None
        self._fields = {"thing": thing_name(), **cfg.topic_vars}
        self.ledger = SpoolLedger(cfg.spool_bytes or NUCLEUS_SPOOL_BYTES, NUCLEUS_IN_FLIGHT * cfg.max_message_bytes)
        self._ever_connected = False
        self._meta = MetaCache()  # the latest metadata per tag: each message's header (gateway.destinations.payload)

    def settle(self, stream: str, next_seq: int | None) -> tuple[int | None, bool]:
        """See :meth:`SpoolLedger.settle`: which position of ``stream`` may be committed, or rewind."""
        return self.ledger.settle(stream, next_seq)

    async def start(self) -> None:
        """Nothing to do: the IPC connection is opened by the first send, so a missing nucleus is a retry."""

    async def _connection(self) -> GreengrassIpc:
        async with self._connecting:  # pumps of several streams share one connection
            if self._ipc is None:
                from gateway.ipc import GreengrassIpc  # awscrt is heavy: loaded only when this destination is used

                try:
                    ipc = await GreengrassIpc.connect(timeout_s=self.cfg.request_timeout_s)
                except ConfigError as exc:  # not under Greengrass or token refused: waiting is all we can do
                    raise DestinationError(f"iotcore destination {self.name}: {exc.message}", fix=exc.fix,
                                           retryable=True) from exc
                if self._ever_connected:
                    # The connection was lost: if the nucleus restarted, a memory spool went with it.
                    self.ledger.new_epoch()
                self._ever_connected = True
                # GreengrassIpc also connects again by itself when the nucleus drops the connection (a restart):
                # that too may have taken a memory spool with it
                ipc.on_reconnect(self.ledger.new_epoch)
                await self._learn_spooler(ipc)
                self._ipc = ipc
            return self._ipc

    async def _learn_spooler(self, ipc: GreengrassIpc) -> None:
        """Read the nucleus' spooler settings (any component may read another's configuration)."""
        try:
            mqtt: dict[str, Any] = await ipc.get_configuration(["mqtt"], component=NUCLEUS)
        except GatewayError:  # mqtt not set in the nucleus' configuration: its defaults apply
            mqtt = {}
        spool = mqtt.get("spooler")
        if not isinstance(spool, dict):
            spool = {}
        storage = str(spool.get("storageType", "Memory"))
        size = self.cfg.spool_bytes or _int(spool.get("maxSizeInBytes"), NUCLEUS_SPOOL_BYTES)
        in_flight = _int(mqtt.get("maxInFlightPublishes"), NUCLEUS_IN_FLIGHT)
        disk = self.cfg.spooler == "disk" and storage == "Disk"
        if self.cfg.spooler == "disk" and not disk:
            log.warning("iotcore destination %s: spooler is disk but the nucleus' mqtt.spooler.storageType is %s: "
                        "its spool is in memory and lost at a restart, so positions are committed only once the "
                        "spool window passed. Fix: set mqtt.spooler.storageType: Disk in aws.greengrass.Nucleus "
                        "and deploy aws.greengrass.DiskSpooler", self.name, storage)
        self.ledger.configure(0 if disk else size + in_flight * self.cfg.max_message_bytes)

    def messages(self, records: list[Record]) -> tuple[list[tuple[str, bytes, list[Record]]], list[tuple[Record, str]]]:
        return pack_by_topic(records, self.cfg.topic, self._fields, self.cfg.max_message_bytes, check_iot_topic,
                             self._meta)

    async def send(self, records: list[Record]) -> SendResult:
        packed, refused = self.messages(records)
        ipc = await self._connection()
        by_topic: dict[str, list[tuple[bytes, list[Record]]]] = {}
        for topic, payload, recs in packed:
            by_topic.setdefault(topic, []).append((payload, recs))
        gate = asyncio.Semaphore(self.cfg.concurrent_topics)
        outcomes = await asyncio.gather(*(self._topic(ipc, gate, t, m) for t, m in by_topic.items()))
        result = SendResult(rejected=refused)
        for sent, retry, reason in outcomes:
            result.bytes_sent += sent
            result.retry += retry
            result.retry_reason = result.retry_reason or reason
        return result

    async def _topic(
        self, ipc: GreengrassIpc, gate: asyncio.Semaphore, topic: str, messages: list[tuple[bytes, list[Record]]]
    ) -> tuple[int, list[Record], str]:
        """Publish one topic's messages in order; at the first failure the rest of the topic waits for a retry."""
        sent = 0
        limiter = self._own_limiter or publisher_limiter()
        async with gate:
            for i, (payload, _) in enumerate(messages):
                await limiter.acquire(len(payload))
                try:
                    await ipc.publish_to_iot_core(topic, payload, qos=1)
                    self.ledger.accepted(len(payload))
                except GatewayError as exc:
                    if not isinstance(exc, DestinationError | ConfigError):
                        self._drop_connection()  # transport failure: reconnect on the next send
                    left = [r for _, recs in messages[i:] for r in recs]
                    return sent, left, f"iotcore destination {self.name}: {exc}"
                sent += len(payload)
        return sent, [], ""

    def _drop_connection(self) -> None:
        if self._ipc is not None:
            self._ipc.close()
            self._ipc = None

    async def close(self, timeout_s: float) -> None:
        # Bounded as it is, on the loop (GreengrassIpc cancels its tasks there): the SDK's close does not wait for
        # the nucleus, only for its callback executor, which runs subscription callbacks and this connection has
        # none. A publish in flight ends with the connection.
        self._drop_connection()


def _int(value: object, default: int) -> int:
    try:
        return int(str(value)) if value is not None else default
    except ValueError:
        return default


class SpoolLedger:
    """Which delivered positions may be committed while the nucleus' spool may still hold their messages.

    Every message the spooler accepted adds its payload size to a running total; a delivered batch is noted with
    the total at its end. A batch is safe once the total has grown by ``window`` bytes since: that many later
    bytes could not have entered the spool (it holds at most its size) while the batch was still in it. A window
    of 0 (a disk spool) makes every batch safe at once. A new IPC connection starts a new epoch: when a stream
    settles for the first time since, whatever of it is not yet safe (its pending batches and the batch being
    settled, which may have been half sent before the connection dropped) may have been in a spool that a nucleus
    restart lost, so the stream is read again from its committed position.
    """

    def __init__(self, spool_bytes: int, in_flight_bytes: int) -> None:
        self.window = spool_bytes + in_flight_bytes
        self._total = 0
        self._epoch = 0
        self._pending: dict[str, deque[tuple[int, int]]] = {}  # stream -> (next_seq, total at its end)
        self._seen: dict[str, int] = {}  # stream -> epoch of its last settle

    def configure(self, window: int) -> None:
        self.window = window

    def new_epoch(self) -> None:
        self._epoch += 1

    def accepted(self, size: int) -> None:
        self._total += size

    def unconfirmed_bytes(self) -> int:
        """Bytes accepted by the spooler whose batches are not yet safe (shown in tests and docs)."""
        oldest = [q[0][1] for q in self._pending.values() if q]
        return min(self._total - min(oldest), self.window) if oldest else 0

    def settle(self, stream: str, next_seq: int | None) -> tuple[int | None, bool]:
        """Note that everything of ``stream`` before ``next_seq`` was accepted by the spooler (None: nothing new).

        Returns (the position that may be committed now or None, whether the stream must be read again from its
        committed position because the spool that held some of it may be lost).
        """
        pending = self._pending.setdefault(stream, deque())
        reconnected = self._seen.get(stream, 0) != self._epoch
        self._seen[stream] = self._epoch
        if reconnected and self.window and (pending or next_seq is not None):
            pending.clear()
            return None, True
        if next_seq is not None:
            if pending and pending[-1][0] >= next_seq:  # the stream restarted at lower numbers: forget the old
                pending.clear()
            pending.append((next_seq, self._total))
        safe = None
        while pending and self._total - pending[0][1] >= self.window:
            safe = pending.popleft()[0]
        return safe, False


async def diagnose(cfg: IotCoreConfig, timeout_s: float) -> list[Finding]:
    """Greengrass IPC reachable with our token; topic template within IoT Core's limits."""
    from gateway.ipc import GreengrassIpc, running_under_greengrass

    findings: list[Finding] = []
    sample = {"thing": thing_name(), **cfg.topic_vars, "source": "plc", "kind": "value", "tag": "a/b",
              "group": "a"}
    try:
        problem = check_iot_topic(cfg.topic.format(**sample))
    except (KeyError, IndexError, ValueError) as exc:
        problem = f"topic template {cfg.topic!r} cannot be filled: {exc!r}"
    findings.append(failed("topic template", problem, "fix the destination's topic") if problem
                    else passed("topic template", f"{cfg.topic} (e.g. {cfg.topic.format(**sample)})"))
    if not running_under_greengrass():
        findings.append(warning("greengrass ipc", "not running under Greengrass: the IPC socket and SVCUID are "
                                "not set", "run under Greengrass, or use an mqtt destination to IoT Core"))
        return findings
    try:
        ipc = await GreengrassIpc.connect(timeout_s=timeout_s)
    except GatewayError as exc:
        findings.append(failed("greengrass ipc", exc.message, exc.fix))
        return findings
    ipc.close()
    findings.append(passed("greengrass ipc", "connected and authenticated to the nucleus"))
    return findings
