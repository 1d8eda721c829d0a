"""IoT Core destination under Greengrass: ``PublishToIoTCore`` over the nucleus' IPC, QoS 1.

Records are packed into ``{"records": [...]}`` messages of at most 128 KB (IoT Core's message limit) on topics
from a template. Messages of one topic are published one after the other (their order is the records' order);
different topics go concurrently. A send returns only when the nucleus accepted each message; a message that
failed is resent with the rest of its topic, the others are not. Rate limits keep us within IoT Core's quotas per
connection (the nucleus' one connection is shared with every component of the device).

Outside Greengrass, use the ``mqtt`` destination with mutual TLS to the account's IoT Core endpoint instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator

from gateway.destinations.base import RECORD_FIELDS, DestinationBase, SendResult, pack_by_topic, template_problem
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import ConfigError, DestinationError, GatewayError
from gateway.record import Record

if TYPE_CHECKING:
    from gateway.ipc import GreengrassIpc

IOT_CORE_MAX_MESSAGE = 128 * 1024
IOT_CORE_MAX_TOPIC_BYTES = 256
IOT_CORE_MAX_SLASHES = 7


class IotCoreDestination(DestinationBase):
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
    max_messages_per_s: float = Field(
        default=100.0, gt=0, description="Publishes per second (IoT Core: 100 per connection, shared by the device)."
    )
    max_bytes_per_s: float = Field(
        default=512 * 1024, gt=0, description="Bytes per second (IoT Core: 512 KB/s per connection)."
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


def thing_name() -> str:
    return os.environ.get("AWS_IOT_THING_NAME", "local")


class IotCoreSink:
    def __init__(self, cfg: IotCoreDestination) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._ipc: GreengrassIpc | None = None
        self._connecting = asyncio.Lock()
        self._limiter = RateLimiter(cfg.max_messages_per_s, cfg.max_bytes_per_s)
        self._fields = {"thing": thing_name(), **cfg.topic_vars}

    async def start(self) -> None:
        """Nothing to do: the IPC connection is opened by the first send, so a missing nucleus is a retry."""

    async def _connection(self) -> GreengrassIpc:
        async with self._connecting:  # pumps of several streams share one connection
            if self._ipc is None:
                from gateway.ipc import GreengrassIpc  # awscrt is heavy: loaded only when this destination is used

                try:
                    self._ipc = await GreengrassIpc.connect(timeout_s=self.cfg.request_timeout_s)
                except ConfigError as exc:  # not under Greengrass or token refused: waiting is all we can do
                    raise DestinationError(f"iotcore destination {self.name}: {exc.message}", fix=exc.fix,
                                           retryable=True) from exc
            return self._ipc

    def messages(self, records: list[Record]) -> tuple[list[tuple[str, bytes, list[Record]]], list[tuple[Record, str]]]:
        return pack_by_topic(records, self.cfg.topic, self._fields, self.cfg.max_message_bytes, check_iot_topic)

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
        async with gate:
            for i, (payload, _) in enumerate(messages):
                await self._limiter.acquire(len(payload))
                try:
                    await ipc.publish_to_iot_core(topic, payload, qos=1)
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

    async def close(self) -> None:
        self._drop_connection()


async def diagnose(cfg: IotCoreDestination, timeout_s: float) -> list[Finding]:
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
