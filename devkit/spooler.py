"""The nucleus' MQTT spooler, as the IPC stand-in's PublishToIoTCore uses it.

What the real nucleus does (aws-greengrass-nucleus, read from its source):

- ``MqttProxyIPCAgent.PublishToIoTCoreOperationHandler`` calls ``MqttClient.publish(Publish)``, which only adds the
  message to ``Spool`` (``spool.addMessage``) and triggers the spooler task: **the IPC answer means "queued in the
  spooler", not "IoT Core acknowledged it"**. PUBACKs are never reported back to the component.
- ``Spool.queueCapacityCheck``: the spool holds at most ``mqtt.spooler.maxSizeInBytes`` of payload (default
  2.5 MB). Over that, QoS 0 messages are evicted to make room; QoS 1 messages never are, the publish fails with
  ``SpoolerStoreException("Message spool is full. Message could not be added.")`` (a ``ServiceError`` over IPC).
  A message larger than the whole spool fails with "Message is larger than the size of message spool.".
- While offline a QoS 0 message is refused ("Device is offline. Dropping QoS 0 message.") unless
  ``keepQos0WhenOffline``.
- ``mqtt.spooler.storageType`` is ``Memory`` by default (``SpoolerStorageType``): the spool is lost with the
  nucleus process (restart, crash, power loss). ``Disk`` needs the ``aws.greengrass.DiskSpooler`` component
  (nucleus 2.11+); without it ``Spool.setupSpooler`` falls back to memory, logging a warning.
- ``MqttClient.publishSingleSpoolerMessage``: the spooler publishes oldest first (``Spool.popId``), removes a
  message on PUBACK, puts a failed one back at the front and drops it after ``mqtt.maxPublishRetry`` failures
  (default 100; -1 retries forever).

:class:`NucleusSpool` reproduces these answers so that tests can show what a component loses and what it does not.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

#: ``Spool.DEFAULT_SPOOL_MAX_MESSAGE_QUEUE_SIZE_IN_BYTES``.
DEFAULT_SPOOL_BYTES = int(2.5 * 1024 * 1024)
#: ``MqttClient.DEFAULT_MQTT_MAX_OF_PUBLISH_RETRY_COUNT``.
DEFAULT_MAX_PUBLISH_RETRY = 100
SPOOL_FULL = "Message spool is full. Message could not be added."
TOO_LARGE = "Message is larger than the size of message spool."
OFFLINE_QOS0 = "Device is offline. Dropping QoS 0 message."

#: Called with (component, topic, payload, qos) for each message "IoT Core" acknowledged; raises to refuse it.
Deliver = Callable[[str, str, bytes, int], "Awaitable[None] | None"]


class SpoolerStoreError(Exception):
    """``SpoolerStoreException``: the publish is refused; the IPC answer is a ServiceError with this message."""


@dataclass
class SpooledMessage:
    component: str
    topic: str
    payload: bytes
    qos: int
    retried: int = 0


class NucleusSpool:
    """The spooler between PublishToIoTCore's answer and IoT Core.

    Args:
        deliver: IoT Core; called for each message while online, oldest first.
        max_bytes: ``mqtt.spooler.maxSizeInBytes``.
        storage: ``mqtt.spooler.storageType``: ``Memory`` is lost by :meth:`restart`; ``Disk`` (DiskSpooler) is
            kept in ``path``.
        path: the disk spool's file (needed with ``Disk``).
        online: whether the nucleus' MQTT connection is up at first.
        max_publish_retry: ``mqtt.maxPublishRetry``.
    """

    def __init__(
        self,
        deliver: Deliver,
        *,
        max_bytes: int = DEFAULT_SPOOL_BYTES,
        storage: Literal["Memory", "Disk"] = "Memory",
        path: Path | None = None,
        online: bool = True,
        max_publish_retry: int = DEFAULT_MAX_PUBLISH_RETRY,
        retry_delay_s: float = 0.05,
    ) -> None:
        if storage == "Disk" and path is None:
            raise ValueError("a Disk spool needs a path")
        self.deliver = deliver
        self.max_bytes = max_bytes
        self.storage = storage
        self.path = path
        self.max_publish_retry = max_publish_retry
        self.retry_delay_s = retry_delay_s
        self._queue: deque[SpooledMessage] = deque()
        self._online = online
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Messages the spool lost: with the process (a Memory spool at restart) or after maxPublishRetry.
        self.lost_at_restart = 0
        self.dropped_after_retries = 0
        self._load()

    # ---- what PublishToIoTCore calls ------------------------------------------------------------------------

    def add(self, component: str, topic: str, payload: bytes, qos: int) -> None:
        """``MqttClient.publish``: queue the message or raise :class:`SpoolerStoreError`; never waits for IoT Core."""
        if not self._online and qos == 0:
            raise SpoolerStoreError(OFFLINE_QOS0)
        if len(payload) > self.max_bytes:
            raise SpoolerStoreError(TOO_LARGE)
        while self.size_bytes + len(payload) > self.max_bytes:
            qos0 = next((m for m in self._queue if m.qos == 0), None)
            if qos0 is None:  # QoS 1 is never evicted
                raise SpoolerStoreError(SPOOL_FULL)
            self._queue.remove(qos0)
        self._queue.append(SpooledMessage(component, topic, payload, qos))
        self._save()
        self._wake.set()

    # ---- the nucleus' side ----------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Payload bytes queued (``Spool.getCurrentSpoolerSize``)."""
        return sum(len(m.payload) for m in self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def online(self) -> bool:
        return self._online

    def set_online(self, online: bool) -> None:
        """The nucleus' MQTT connection came up or went down; offline, QoS 0 messages are dropped."""
        self._online = online
        if not online:
            self._queue = deque(m for m in self._queue if m.qos != 0)
            self._save()
        self._wake.set()

    def restart(self) -> None:
        """The nucleus process ends and starts again: a Memory spool is gone, a Disk spool is read back."""
        if self.storage == "Memory":
            self.lost_at_restart += len(self._queue)
            if self._queue:
                log.warning("nucleus restart: %d spooled messages lost with the memory spooler", len(self._queue))
            self._queue.clear()
        else:
            self._queue.clear()
            self._load()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        """``MqttClient.runSpooler``: while online, publish the oldest message; PUBACK removes it."""
        while True:
            if not self._online or not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            message = self._queue[0]
            try:
                result = self.deliver(message.component, message.topic, message.payload, message.qos)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - IoT Core refused: retried, as the nucleus does
                message.retried += 1
                if self.max_publish_retry != -1 and message.retried > self.max_publish_retry:
                    self._remove(message)
                    self.dropped_after_retries += 1
                    log.warning("spooler: dropped a message to %s after %d retries: %r", message.topic,
                                self.max_publish_retry, exc)
                await asyncio.sleep(self.retry_delay_s)  # the nucleus' retry pace, not synchronisation
                continue
            self._remove(message)

    def _remove(self, message: SpooledMessage) -> None:
        if self._queue and self._queue[0] is message:
            self._queue.popleft()
        elif message in self._queue:  # a restart may have replaced the queue meanwhile
            self._queue.remove(message)
        self._save()

    # ---- the disk spool ----------------------------------------------------------------------------------------

    def _save(self) -> None:
        if self.storage != "Disk" or self.path is None:
            return
        lines = [json.dumps({"component": m.component, "topic": m.topic, "qos": m.qos,
                             "payload": base64.b64encode(m.payload).decode()}) for m in self._queue]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)

    def _load(self) -> None:
        if self.storage != "Disk" or self.path is None or not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            self._queue.append(SpooledMessage(str(item["component"]), str(item["topic"]),
                                              base64.b64decode(item["payload"]), int(item["qos"])))
