"""Alarm events over Greengrass IPC: each raise and clear goes to AWS IoT Core and to local pub/sub, as JSON.

IPC operations used (the recipe's ``accessControl`` must allow them for the configured topics):
``aws.greengrass#PublishToIoTCore`` (service ``aws.greengrass.ipc.mqttproxy``) and ``aws.greengrass#PublishToTopic``
(service ``aws.greengrass.ipc.pubsub``). Outside Greengrass nothing is published (one INFO line says so): the alarm
records in the output stream are the durable copy either way.

Events wait in a bounded in-memory queue (oldest dropped beyond ``MAX_QUEUED``, counted). A retryable failure (the
nucleus busy or the connection lost) is retried with backoff, and the event goes to each topic once even when one
of them failed; a refusal (not authorized) is logged once per topic with the recipe fix and the event is dropped
for that topic, counted.

IoT Core publishes take at most the detector's share of the device-wide budget
(:data:`gateway.destinations.iotcore.DETECTOR_BUDGET`, 10 messages and 48 KB a second): the nucleus' one MQTT
connection is shared with the publisher's ``iotcore`` destinations and the nucleus itself, and IoT Core allows 100
publishes and 512 KB a second on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.aio import Backoff
from gateway.anomaly.config import AlarmEvents
from gateway.destinations.iotcore import DETECTOR_BUDGET, RateLimiter
from gateway.errors import ConfigError, GatewayError
from gateway.ipc import GreengrassIpc, running_under_greengrass

log = logging.getLogger(__name__)

MAX_QUEUED = 1000
COUNTERS = ("events_sent", "event_send_errors", "events_dropped")  # refused targets are errors; a full queue drops
THING_ENV = "AWS_IOT_THING_NAME"


@dataclass
class _Queued:
    payload: bytes
    targets: list[tuple[str, str]]  # ("iot" | "local", topic) still to publish to


class AlarmPublisher:
    """Publishes alarm events; :meth:`run` until stopped, :meth:`push` from the component's loop."""

    def __init__(self, cfg: AlarmEvents) -> None:
        self.cfg = cfg
        self.enabled = running_under_greengrass()
        self._ipc: GreengrassIpc | None = None
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._refused: set[str] = set()
        self._limiter: RateLimiter | None = None  # made on the loop that publishes
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_error = ""
        if not self.enabled:
            log.info("not running under Greengrass: alarm events are not published over IPC (the alarm records "
                     "are in the output stream)")

    def push(self, events: list[dict[str, Any]]) -> None:
        """Queue events (the JSON of :class:`gateway.anomaly.engine.AlarmEvent`)."""
        if not self.enabled:
            return
        thing = os.environ.get(THING_ENV, "unknown-thing")
        for event in events:
            targets = []
            if self.cfg.iot_core_topic:
                targets.append(("iot", self.cfg.iot_core_topic.format(thing=thing, group=event["group"])))
            if self.cfg.local_topic:
                targets.append(("local", self.cfg.local_topic.format(thing=thing, group=event["group"])))
            if targets:
                self._queue.append(_Queued(json.dumps(event).encode(), targets))
        while len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self.counters["events_dropped"] += 1
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish queued events until ``stop``."""
        if not self.enabled:
            return
        backoff = Backoff(0.5, 30.0)
        while not stop.is_set():
            if not self._queue:
                self._wake.clear()
                await _first(self._wake.wait(), stop.wait())
                continue
            try:
                if self._ipc is None:
                    self._ipc = await GreengrassIpc.connect()
                await self._publish(self._queue[0])
            except ConfigError as exc:  # refused: not authorized, or no IPC at all; retrying cannot help
                self._drop_target(exc)
                continue
            except GatewayError as exc:
                self._failed(exc)
                self.close()  # a lost or stalled connection does not come back by itself: connect again
                await _first(asyncio.sleep(backoff.next_delay()), stop.wait())
                continue
            backoff.reset()
            self._queue.popleft()
            self.counters["events_sent"] += 1
            self.last_error = ""

    async def _publish(self, item: _Queued) -> None:
        assert self._ipc is not None
        while item.targets:
            kind, topic = item.targets[0]
            if kind == "iot":
                if self._limiter is None:
                    self._limiter = RateLimiter(*DETECTOR_BUDGET)
                await self._limiter.acquire(len(item.payload))
                await self._ipc.publish_to_iot_core(topic, item.payload, self.cfg.iot_core_qos)
            else:
                await self._ipc.publish_to_topic(topic, item.payload)
            item.targets.pop(0)

    def _drop_target(self, exc: ConfigError) -> None:
        item = self._queue[0]
        kind, topic = item.targets.pop(0)
        self.counters["event_send_errors"] += 1
        self.last_error = str(exc)
        if topic not in self._refused:
            self._refused.add(topic)
            log.error("alarm events to %s topic %s are refused: %s", kind, topic, exc)
        if not item.targets:
            self._queue.popleft()

    def _failed(self, exc: GatewayError) -> None:
        if str(exc) != self.last_error:
            log.warning("publishing an alarm event failed (retrying): %s", exc)
        self.last_error = str(exc)

    def close(self) -> None:
        """Close the IPC connection."""
        if self._ipc is not None:
            self._ipc.close()
            self._ipc = None

    def status(self) -> dict[str, Any]:
        """The ``events`` part of the component's status file."""
        return {
            "enabled": self.enabled,
            "iot_core_topic": self.cfg.iot_core_topic,
            "local_topic": self.cfg.local_topic,
            "queued": len(self._queue),
            **self.counters,
            "last_error": self.last_error,
        }


async def _first(*aws: Any) -> None:
    """Wait until the first of the awaitables completes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
