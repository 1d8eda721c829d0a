"""One subscription of an OPC UA session, read in order, with what went missing on the way.

Built on asyncua's session services (``create_subscription`` with our own publish callback,
``create_monitored_items`` with our own client handles, ``delete_subscriptions``) rather than on its ``Subscription``
object, because what tells of lost values is in the publish responses themselves, which that object hides:

- **Overflow bit.** A monitored item whose server-side queue (``queue_size`` > 1) overflowed marks the oldest value
  it kept with the Overflow info bit (Part 4, 7.39 and 5.12.1.5): values of that tag were discarded before it. A
  queue of 1 never sets it (the newest value replaces the last by definition).
- **Sequence gaps.** Each notification message carries the next number of the subscription's sequence (keep-alives
  carry the number of the next message and use none): a number skipped is a message that never arrived.
- **Held back.** Notifications wait here (at most :data:`QUEUE`) for the emitter, which waits for the stream. When
  that bound is reached the publish callback does not return, so asyncua sends no new publish request and the
  server keeps the values: then its queues overflow (reported by the bit above) or, with a queue of 1, hold only the
  newest value of each tag. Memory stays bounded and what is lost is lost at the server, where it is counted.

The source (:mod:`gateway.sources.opcua`) takes :class:`Notice` entries from :meth:`Feed.next` and counts them
(:class:`Losses`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node

from gateway.sources.common import Counters

if TYPE_CHECKING:  # hints only: the config model imports the source, which imports this module
    from gateway.sources.opcua_config import OpcUaConnection

log = logging.getLogger(__name__)

BATCH = 1000  # monitored items per CreateMonitoredItems call
QUEUE = 50_000  # notifications held for the emitter; past it the publish loop waits (the server keeps the values)
OVERFLOW_BIT = 0x0480  # InfoType DataValue (0x0400) and Overflow (0x0080) in a StatusCode (Part 4, 7.39)
EPISODE_S = 60.0  # losses closer together than this are one episode: logged once


@dataclass(frozen=True)
class Lost:
    """Notification messages missing from the sequence (``messages`` > 0), or a time the publish loop was held back
    because the emitter did not keep up (``messages`` == 0), between the publish times ``t1_ns`` and ``t2_ns``."""

    t1_ns: int
    t2_ns: int
    messages: int


Notice = list[ua.MonitoredItemNotification] | Lost | ua.StatusChangeNotification


@dataclass
class Losses:
    """What one connection lost before it read it, counted in its :class:`Counters` and logged once per episode."""

    name: str
    counters: Counters
    last_logged: float = field(default=-EPISODE_S * 2)

    def count(self, key: str, n: int = 1) -> None:
        setattr(self.counters, key, getattr(self.counters, key) + n)

    def note(self, what: str) -> None:
        """A loss was seen: log it unless it belongs to the episode logged last."""
        now = time.monotonic()
        if now - self.last_logged > EPISODE_S:
            self.count("overloads")
            log.warning("connection %s: values were lost before the gateway read them: %s. The collector does not "
                        "keep up with what the server sends (counted as values_lost / notification_messages_lost; "
                        "OVERFLOW flag on the first value after, gap record for the time). Fix: a faster stream "
                        "(disk), fewer nodes or a longer sampling_interval_ms on this connection, or a larger "
                        "queue_size to ride out bursts", self.name, what)
        self.last_logged = now


class Feed:
    """One subscription on a connected client: :meth:`create` it, take its notices with :meth:`next`,
    :meth:`delete` it."""

    def __init__(self, client: Client, cfg: OpcUaConnection, tags: list[str], limit: int | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.tags = tags  # client handle i + 1 is tags[i]
        self.limit = limit or QUEUE
        self.id: int | None = None
        self.queued = 0  # notifications in _notices
        self._notices: deque[Notice] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._next_seq: int | None = None  # the sequence number the next notification message should carry
        self._last_publish_ns = 0
        self._closed = False

    async def create(self, nodes: list[Node]) -> dict[int, ua.StatusCode]:
        """Create the subscription and a monitored item per node; returns the index of each node the server
        refused, with its status."""
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.cfg.publishing_interval_ms, RequestedLifetimeCount=10000,
            RequestedMaxKeepAliveCount=self.client.get_keepalive_count(self.cfg.publishing_interval_ms),
            MaxNotificationsPerPublish=10000, PublishingEnabled=True, Priority=0)
        result = await self.client.uaclient.create_subscription(params, self._on_publish)
        self.id = result.SubscriptionId
        refused: dict[int, ua.StatusCode] = {}
        for start in range(0, len(nodes), BATCH):
            items = [self._item(start + i, node) for i, node in enumerate(nodes[start : start + BATCH])]
            results = await self.client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
                SubscriptionId=self.id, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=items))
            for i, res in enumerate(results):
                if not res.StatusCode.is_good():
                    refused[start + i] = res.StatusCode
        return refused

    def _item(self, index: int, node: Node) -> ua.MonitoredItemCreateRequest:
        params = ua.MonitoringParameters(ClientHandle=index + 1, SamplingInterval=self.cfg.sampling_interval_ms,
                                         QueueSize=self.cfg.queue_size, DiscardOldest=True)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)

    async def delete(self, timeout_s: float) -> None:
        """Delete it on the server (best effort) and end :meth:`next`."""
        self.close()
        if self.id is not None:
            try:
                await asyncio.wait_for(self.client.uaclient.delete_subscriptions([self.id]), timeout_s)
            except (ua.UaError, OSError, ConnectionError, asyncio.TimeoutError):
                pass  # the server may have dropped it already, or the link is gone

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._room.set()  # a held publish loop goes on (and finds the subscription gone)

    @property
    def backlog(self) -> int:
        """Notifications received and not taken yet."""
        return self.queued

    async def next(self) -> Notice | None:
        """The next notice in the order the server sent them; None once deleted."""
        while not self._notices:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        notice = self._notices.popleft()
        if isinstance(notice, list):
            self.queued -= len(notice)
            if self.queued <= self.limit // 2:
                self._room.set()
        return notice

    def _on_publish(self, result: ua.PublishResult) -> Awaitable[None] | None:
        """asyncua's publish loop calls this with every publish response of this subscription (keep-alives too)
        and awaits what it returns before it sends the next publish request."""
        if self._closed:
            return None
        msg = result.NotificationMessage
        data = msg.NotificationData or []
        publish_ns = int(msg.PublishTime.timestamp() * 1e9) if msg.PublishTime is not None else time.time_ns()
        seq = int(msg.SequenceNumber)
        missing = missing_messages(self._next_seq, seq)
        if missing:
            self._push(Lost(self._last_publish_ns or publish_ns, publish_ns, missing))
        if not data:  # a keep-alive carries the number the next message will have, and uses none
            self._next_seq = seq
            return None
        self._next_seq = seq % 0xFFFFFFFF + 1  # numbers wrap to 1 after 2^32 - 1 (Part 4, 7.38)
        self._last_publish_ns = publish_ns
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification) and notif.MonitoredItems:
                self._push(notif.MonitoredItems)
                self.queued += len(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                self._push(notif)
                return None  # the subscription ends: never hold that back
        if self.queued > self.limit:
            return self._hold()
        return None

    async def _hold(self) -> None:
        self._room.clear()
        t0 = time.time_ns()  # from now until the next publish request the server is asked for nothing
        await self._room.wait()
        if not self._closed:
            self._push(Lost(t0, time.time_ns(), 0))

    def _push(self, notice: Notice) -> None:
        self._notices.append(notice)
        self._ready.set()


def missing_messages(expected: int | None, seq: int) -> int:
    """How many notification messages were skipped when ``seq`` arrives and ``expected`` was due (0 when none, or
    when nothing was expected yet). Numbers run from 1 to 2^32 - 1, then wrap to 1."""
    if expected is None or seq == expected:
        return 0
    gap = (seq - expected) % 0xFFFFFFFF
    return gap if gap < 0x7FFFFFFF else 0  # a number from the past (a republished message) is no loss


def overflowed(dv: ua.DataValue) -> bool:
    """The server discarded values of this item before this one (its queue overflowed)."""
    sc = dv.StatusCode
    return sc is not None and (sc.value & OVERFLOW_BIT) == OVERFLOW_BIT


