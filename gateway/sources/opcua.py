"""OPC UA collector connection (asyncua): subscription or polling, secured or not, tags listed or browsed.

After every (re)connect the namespace indexes, the node ids and the browse patterns are resolved again and the
monitored items are created again: servers renumber namespaces after restarts, and a subscription that is not
rebuilt is the classic "connected but no data". One subscription per session (asyncua keeps one publish request in
flight per session, NOTES 4), monitored items created in batches; what the server lost before the gateway read it
(Overflow bits, notification sequence gaps, a publish loop held back by a slow stream) is counted, logged once per
episode, flagged on the next value and recorded as a gap (:mod:`gateway.sources.opcua_subscription`). asyncua's
supervisor reads the server state every ``keepalive_s``; a link that stops answering ends the session and the
collector reconnects with backoff. A watchdog compares what the subscription delivered with what a read returns; a
subscription that went silent while values moved is deleted and created again on the same session. A subscription
reports changes only: a timer re-sends each unchanged tag every ``deadband.heartbeat_s`` (:meth:`Emitter.heartbeats`).

Every value carries the server's StatusCode (``Record.status``), Good (0) included, and the server's source
timestamp as its identity (``Flag.SERVER_TS``). A lost link makes every tag BAD with :data:`LINK_LOST`.

Security, certificates and identities live in :mod:`gateway.sources.opcua_security`, browsing in
:mod:`gateway.sources.opcua_browse`, connecting and resolving nodes in :mod:`gateway.sources.opcua_session`, the checks
of ``gatewayctl doctor`` in :mod:`gateway.sources.opcua_diagnose`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from gateway.aio import cancel_and_wait
from gateway.errors import SourceError
from gateway.record import Flag, Quality, Value, now_ns, oversize
from gateway.redact import redact_text, redact_url
from gateway.sources.common import Emitter
from gateway.sources.opcua_history import GapFiller, dv_ts_ns
from gateway.sources.opcua_meta import emit_metadata
from gateway.sources.opcua_session import connect, disconnect, resolve_nodes
from gateway.sources.opcua_subscription import OVERFLOW_BIT, Feed, Losses, Lost, overflowed
from gateway.sources.opcua_values import ValueConverter

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.diagnostics import Finding
    from gateway.sources.opcua_config import OpcUaConnection

log = logging.getLogger(__name__)
_BACKFILL, _OVERFLOW, _SERVER_TS = int(Flag.BACKFILL), int(Flag.OVERFLOW), int(Flag.SERVER_TS)  # ints: `&` stays in C
_PLAIN = frozenset({float, int, str, bool, type(None)})  # values that are records' values as they are
# (status, source time, flags) of a reading -> (its place in a notification, its time in ns, its (tag, value) pairs)
_Readings = dict[tuple[int, datetime | None, int], tuple[int, int, list[tuple[str, Value]]]]
_QUALITY = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD)  # by a StatusCode's severity bits (Part 4)

# connection name -> tag -> last value read. Kept across sessions (the collector makes a source per attempt), so a
# session that dies before its first notification marks its tags BAD with the same value as the outage's first BAD
# record, which the deadband then suppresses: one BAD per tag and outage. Bounded by the configured tags.
_LAST_VALUES: dict[str, dict[str, Value]] = {}

BATCH = 1000  # nodes per Read call
# The status of the BAD record each tag gets when the gateway loses its link to the server (the value is the last
# one read): BadServerNotConnected, "the client is not connected to the server" (Part 4), seen from the gateway.
# No server puts it on a value it serves, so a consumer tells the gateway's lost link from a failure the server
# reports (BadSensorFailure, or BadCommunicationError from the server's own device link).
LINK_LOST = ua.StatusCodes.BadServerNotConnected
UNKNOWN_NODE = ua.StatusCodes.BadNodeIdUnknown  # a configured node id that cannot resolve on this server


def _quality(dv: ua.DataValue) -> Quality:
    sc = dv.StatusCode
    if sc is None or sc.is_good():
        return Quality.GOOD
    return Quality.UNCERTAIN if sc.is_uncertain() else Quality.BAD


def _ts_ns(dt: datetime | None) -> int | None:
    return int(dt.timestamp() * 1e9) if dt is not None else None


_warned: set[tuple[str, str, str]] = set()


def warn_if_plain(cfg: OpcUaConnection) -> None:
    """Once per connection and process: say loudly that a channel with security None is open to anyone on the
    network, and that a password allowed on it (allow_insecure_identity) reaches whoever answers."""
    sec, where = cfg.security, redact_url(cfg.endpoint)
    if sec.mode == "None" and ("plain", cfg.name, cfg.endpoint) not in _warned:
        _warned.add(("plain", cfg.name, cfg.endpoint))
        log.warning("connection %s: %s is a plain channel: unsigned, unencrypted; anyone on the network can read "
                    "and alter values. Fix: set security.policy: Basic256Sha256 and security.mode: SignAndEncrypt "
                    "(or Sign)", cfg.name, where)
    if sec.mode == "None" and sec.password is not None and ("identity", cfg.name, cfg.endpoint) not in _warned:
        _warned.add(("identity", cfg.name, cfg.endpoint))
        log.warning("connection %s: the password of user %s goes to %s with security mode None because "
                    "security.allow_insecure_identity is true: whoever answers at that address can read it. Fix: "
                    "use security.mode: SignAndEncrypt with a trusted server certificate", cfg.name, sec.username,
                    where)


class OpcUaSource:
    """Reads one OPC UA server; see the module docstring."""

    def __init__(self, cfg: OpcUaConnection) -> None:
        self.cfg = cfg
        self._last_notified: dict[str, int] = {}
        self._last_value = _LAST_VALUES.setdefault(cfg.name, {})  # tag -> last value read (BAD on link loss)
        self._values = ValueConverter(cfg)  # this session's: arrays, structures, reasons logged once per tag
        self._feed: Feed | None = None
        self._filler: GapFiller | None = None  # reads the gap before this session from the server's history
        self._after_loss: set[str] = set()  # tags whose next value follows a loss: it carries Flag.OVERFLOW
        self._waiting = False  # the consumer waits for the stream: the subscription is behind, not silent
        self._since = 0  # when the session started (gateway time)

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        warn_if_plain(self.cfg)
        self._since = now_ns()  # heartbeats keep alive what this session read, not what an earlier one did
        client = await connect(self.cfg)
        tags: list[str] = []
        try:
            nodes, unresolved = await resolve_nodes(client, self.cfg)
            for tag, why in unresolved.items():
                self._bad(emitter, tag, why, UNKNOWN_NODE)
            emitter.counters.extra["tags"] = len(nodes)
            on_connected()
            tags = list(nodes)
            await self._values.load_definitions(client, nodes.values())  # before any value: structures decode
            await emit_metadata(client, self.cfg, nodes, emitter)  # units and ranges, before the values they describe
            self._filler = GapFiller(self.cfg, emitter, tags, lambda tag, dv: self._emit_history(emitter, tag, dv))
            self._filler.start(client, nodes)  # a task beside the live values, which it never delays
            if self.cfg.mode == "polling":
                await self._poll(client, nodes, emitter)
            else:
                await self._subscribe(client, nodes, emitter)
        except asyncio.CancelledError:
            raise  # stopped or reconfigured: not a fault of the data
        except BaseException as exc:
            # a subscription only reports changes: without this the last value would stay GOOD for the whole outage
            self._link_lost(emitter, tags)
            if isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError | UaError):
                raise SourceError(f"{redact_url(self.cfg.endpoint)}: link lost ({type(exc).__name__}: "
                                  f"{redact_text(str(exc))})",
                                  retryable=True) from exc
            raise
        finally:
            if self._filler is not None:
                await self._filler.stop()
            if self._feed is not None:
                self._feed.close()
            await disconnect(client)

    def _link_lost(self, emitter: Emitter, tags: list[str]) -> None:
        """Every tag of the session BAD once, carrying the last value it read (as Modbus and OPC DA do): the value
        is what the tag was when the link went, the quality says it is no longer current, the status
        (:data:`LINK_LOST`) that the gateway lost the link, not the server the value. A reconnect attempt that
        fails before its session is up has no tags, so an outage makes one BAD per tag, not one per attempt."""
        for tag in self._values.expand(tags):  # an array read element by element: each of its element tags
            emitter.emit(tag, self._last_value.get(tag), Quality.BAD, status=LINK_LOST)

    def _bad(self, emitter: Emitter, tag: str, why: str, status: int) -> None:
        emitter.emit(tag, None, Quality.BAD, status=status)
        emitter.counters.read_errors += 1
        log.warning("connection %s: tag %s is BAD: %s (fix the node id; `gatewayctl doctor` suggests close "
                    "matches)", self.cfg.name, tag, why)

    async def _read(self, client: Client, nodes: list[Node]) -> list[ua.DataValue]:
        out: list[ua.DataValue] = []
        for start in range(0, len(nodes), BATCH):
            out.extend(await client.read_attributes(nodes[start : start + BATCH], AttributeIds.Value))
        return out

    async def _poll(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> None:
        tags, node_list = list(nodes), list(nodes.values())
        while True:
            await emitter.room()  # waits while the stream writes slower than the server is read
            t0 = time.monotonic()
            for tag, dv in zip(tags, await self._read(client, node_list), strict=True):
                self._emit(emitter, tag, dv)
            await asyncio.sleep(max(0.0, self.cfg.scan_interval_s - (time.monotonic() - t0)))

    async def _create(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> Feed:
        feed = Feed(client, self.cfg, list(nodes))
        for i, sc in (await feed.create(list(nodes.values()))).items():
            self._bad(emitter, feed.tags[i], f"the server rejected the monitored item: {sc.name}", sc.value)
        return feed

    async def _subscribe(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> None:
        self._feed = await self._create(client, nodes, emitter)
        tasks = {asyncio.create_task(self._consume(emitter)), asyncio.create_task(self._watch(client, nodes, emitter)),
                 asyncio.create_task(emitter.heartbeats(self._since))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the failure that ends the session
        finally:
            await cancel_and_wait(*tasks)  # asyncua's requests go through wait_for, which can lose the cancel

    async def _consume(self, emitter: Emitter) -> None:
        # one loop over whole notification messages: no task or timer per notification (tens of thousands a second)
        losses = Losses(self.cfg.name, emitter.counters)
        while True:
            feed = self._feed
            assert feed is not None
            while (notice := await feed.next()) is not None:  # None: the watchdog replaced the subscription
                if isinstance(notice, list):
                    self._emit_notification(emitter, notice, feed.tags, losses)
                    self._waiting = True
                    await emitter.room()  # the stream is slower: hold the server back, not memory (see Feed)
                    self._waiting = False
                elif isinstance(notice, Lost):
                    self._lost(emitter, notice, losses, feed.tags)
                else:
                    raise SourceError(f"{redact_url(self.cfg.endpoint)}: subscription ended by status "
                                      f"{notice.Status.name}", retryable=True)

    def _lost(self, emitter: Emitter, lost: Lost, losses: Losses, tags: list[str]) -> None:
        """Messages missing from the sequence, or a time the server was held back: a gap record for the time, and
        OVERFLOW on the next value of every tag whose values the server may have dropped unreported (any tag, for
        a missing message; with ``queue_size`` 1, whose overwrites the server never reports, after a hold)."""
        if lost.messages:
            losses.count("notification_messages_lost", lost.messages)
            losses.note(f"{lost.messages} notification messages missing from the subscription's sequence")
        else:
            losses.note(f"the stream did not keep up, so the server was not asked for values for "
                        f"{(lost.t2_ns - lost.t1_ns) / 1e9:.1f} s")
        if lost.messages or self.cfg.queue_size == 1:
            self._after_loss.update(tags)
        emitter.emit_gap(lost.t1_ns, lost.t2_ns, flags=Flag.OVERFLOW)

    async def _watch(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> None:
        while True:
            await asyncio.sleep(self.cfg.watchdog_s)
            old = self._feed
            assert old is not None
            if self._waiting or old.backlog:
                continue  # behind the server, not silent: values wait here for the stream
            silent = await self._silent(client, nodes)
            if not silent:
                continue
            emitter.counters.extra["subscription_rebuilds"] = \
                int(emitter.counters.extra.get("subscription_rebuilds", 0)) + 1
            log.warning("connection %s: subscription went silent (%s); rebuilding it", self.cfg.name, silent)
            self._last_notified = {}
            self._feed = await self._create(client, nodes, emitter)
            await old.delete(self.cfg.timeout_s)  # also ends the consumer's loop over it

    async def _silent(self, client: Client, nodes: dict[str, Node]) -> str:
        """Why the subscription looks silent ('' if not): a value moved on the server long after its last
        notification reached us."""
        tags, node_list = list(nodes), list(nodes.values())
        values = await self._read(client, node_list)  # also proves the session lives
        slack_ns = int((max(self.cfg.watchdog_s, 2 * self.cfg.publishing_interval_ms / 1000)
                        + self.cfg.publishing_interval_ms / 1000) * 1e9)
        for tag, dv in zip(tags, values, strict=True):
            ts = _ts_ns(dv.SourceTimestamp)
            seen = self._last_notified.get(tag)
            if ts is not None and seen is not None and ts - seen > slack_ns and _quality(dv) == Quality.GOOD:
                return f"tag {tag} changed on the server {(ts - seen) / 1e9:.1f} s after its last notification"
        return ""

    def _emit(self, emitter: Emitter, tag: str, dv: ua.DataValue, losses: Losses | None = None) -> None:
        quality = _quality(dv)
        status = dv.StatusCode.value if dv.StatusCode is not None else 0
        source_ts = _ts_ns(dv.SourceTimestamp)
        ts = source_ts or _ts_ns(dv.ServerTimestamp)
        flags = _SERVER_TS if source_ts else 0
        if ts is not None:
            self._last_notified[tag] = ts
            if self._filler is not None:
                self._filler.live(tag, ts)
        if losses is not None and overflowed(dv):  # the server dropped values of this tag before this one
            flags |= _OVERFLOW
            losses.count("values_lost")
            losses.note(f"tag {tag}: the server's queue of {self.cfg.queue_size} overflowed")
        if self._after_loss and tag in self._after_loss:
            self._after_loss.discard(tag)
            flags |= _OVERFLOW
        # one value, or one per array element (arrays: elements); one that cannot be carried is BAD, its reason logged
        for name, value, reason in self._values.convert(tag, dv.Value, emitter.counters):
            if value is not None and not oversize(value):  # the emitter makes an over-large value BAD, counted
                self._last_value[name] = value
            emitter.emit(name, value, quality if reason is None else Quality.BAD, ts, status=status, flags=flags)

    def _emit_notification(self, emitter: Emitter, items: list[ua.MonitoredItemNotification], tags: list[str],
                           losses: Losses) -> None:
        """The values of one data change notification, as :meth:`_emit` makes them one by one, but handed to
        :meth:`Emitter.emit_many` a reading at a time (issue 18: this is most of the collector's own work per value
        at tens of thousands a second). A server samples its items at a scan and stamps them alike, so the plain
        values (numbers, booleans, text) that share status, source time and flags are one reading, with one gateway
        time, and what they share is worked out once. A monitored item's queued values come one after another, so
        the readings interleave: they are gathered over the whole notification and emitted in the order they first
        appear, which keeps each tag's values in order (if it would not, what was gathered is emitted first). The
        rare cases go through :meth:`_emit` in their place."""
        readings: _Readings = {}
        placed: dict[str, int] = {}  # tag -> the reading its last value went into
        overflowed_tags: list[str] = []
        last_value, last_notified, after_loss = self._last_value, self._last_notified, self._after_loss
        first_live = self._filler.first_live if self._filler is not None else None
        n = len(tags)
        for item in items:
            handle = item.ClientHandle
            if not 0 < handle <= n:
                continue
            tag, dv = tags[handle - 1], item.Value
            variant, sc, stamp, flags = dv.Value, dv.StatusCode, dv.SourceTimestamp, _SERVER_TS
            raw = variant.Value if variant is not None else None
            status = sc.value if sc is not None else 0
            if stamp is None:
                stamp, flags = dv.ServerTimestamp, 0
            if status & OVERFLOW_BIT == OVERFLOW_BIT:
                flags |= _OVERFLOW
            key = (status, stamp, flags)
            reading = readings.get(key)
            if reading is None:
                reading = (len(readings), _ts_ns(stamp) or 0, [])
            if (not reading[1] or type(raw) not in _PLAIN or (after_loss and tag in after_loss)
                    or (first_live is not None and tag not in first_live)):
                # no usable time, arrays and structures, the first value after a loss, a tag's first live value
                # (which the gap filler waits for): rare, one at a time in their place
                _emit_readings(emitter, readings)
                readings, placed = {}, {}
                self._emit(emitter, tag, dv, losses)
                continue
            if placed.get(tag, -1) > reading[0]:  # this tag's last value is in a later reading: keep them in order
                _emit_readings(emitter, readings)
                readings, placed = {}, {}
                reading = (0, reading[1], [])
            if reading[0] == len(readings):
                readings[key] = reading
            if flags & _OVERFLOW:  # the server dropped values of this tag before this one
                overflowed_tags.append(tag)
            placed[tag] = reading[0]
            last_notified[tag] = reading[1]
            if raw is not None and (type(raw) is not str or not oversize(raw)):
                last_value[tag] = raw  # what a lost link marks BAD (an over-large text is not kept, as in _emit)
            reading[2].append((tag, raw))
        _emit_readings(emitter, readings)
        if overflowed_tags:  # counted and noted once a notification: an overloaded server marks thousands a second
            losses.count("values_lost", len(overflowed_tags))
            more = f" (and {len(overflowed_tags) - 1} more values)" if len(overflowed_tags) > 1 else ""
            losses.note(f"tag {overflowed_tags[0]}{more}: the server's queue of {self.cfg.queue_size} overflowed")

    def _emit_history(self, emitter: Emitter, tag: str, dv: ua.DataValue) -> None:
        """A value read from the server's history (:mod:`gateway.sources.opcua_history`): converted as a live one,
        flagged ``BACKFILL`` (its id is then over its server timestamp and value, like the live reading's), and
        without touching what the live values keep (the watchdog's times, the last value, overflow marks)."""
        quality = _quality(dv)
        status = dv.StatusCode.value if dv.StatusCode is not None else 0
        for name, value, reason in self._values.convert(tag, dv.Value, emitter.counters):
            emitter.emit(name, value, quality if reason is None else Quality.BAD, dv_ts_ns(dv), status=status,
                         flags=_BACKFILL)


def _emit_readings(emitter: Emitter, readings: _Readings) -> None:
    for (status, _, flags), (_, ts, values) in readings.items():
        emitter.emit_many(values, _QUALITY[status >> 30], ts, status=status, flags=flags)


async def diagnose(cfg: OpcUaConnection, timeout_s: float) -> list[Finding]:
    """The checks of ``gatewayctl doctor`` for one connection (see :mod:`gateway.diagnostics`)."""
    from gateway.sources.opcua_diagnose import diagnose as run

    return await run(cfg, timeout_s)
