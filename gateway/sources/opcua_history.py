"""Filling a gap from an OPC UA server's history (Part 11, HistoryRead with ReadRawModifiedDetails).

After a link loss, a server restart or a gateway restart, the source (:mod:`gateway.sources.opcua`) knows, per tag,
the newest source timestamp the stream holds (:mod:`gateway.sources.laststored`). :func:`backfill` reads from the
server's history every value after it and before the first live value of the new session, in order per tag, and
hands each to ``emit``; the source writes them flagged ``Flag.BACKFILL``. Their record ids are over (source, tag,
source timestamp, value) (:mod:`gateway.record`), so a value stored twice (live and again from history) is one
value downstream.

Bounded: at most ``max_span_s`` back (the older part is reported for a gap record), ``values_per_request`` values
per node and request (NumValuesPerNode; the rest follows with continuation points, which are released when the
read stops early), at most :data:`MAX_VALUES_PER_REQUEST` values per request (nodes x values per node: an answer is
handled in one go on the event loop the live values share), at most ``max_values_per_s`` values a second. Tags are
read in batches of nodes whose gaps start close together: one request serves many nodes.

A node the server does not historize (no HistoryRead bit in its UserAccessLevel, or a Bad status such as
BadHistoryOperationUnsupported) is reported in :attr:`Backfilled.no_history`: the source writes a gap record for
it (no data from t1 to t2) instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds

from gateway.aio import cancel_and_wait
from gateway.record import Flag, Kind
from gateway.sources.common import Emitter

if TYPE_CHECKING:  # hints only: the config model imports the source, which imports this module
    from gateway.sources.opcua_config import OpcUaConnection

log = logging.getLogger(__name__)

NODES_PER_REQUEST = 100  # HistoryReadValueIds in one request (servers cap it: MaxNodesPerHistoryReadData)
# Values one request may ask for (nodes x values_per_request): its answer is decoded and emitted on the event loop
# the live values share, so this bounds how long they wait (52,000 values took 0.4-0.5 s on the dev VM)
MAX_VALUES_PER_REQUEST = 10_000
# the first live values are awaited this long (at least) before reading starts; tags still without one are read as
# theirs come, up to LATE_LIVE_S (at least), and then up to now
FIRST_LIVE_WAIT_S = 2.0
LATE_LIVE_S = 60.0
RELEASE_TIMEOUT_S = 2.0  # releasing continuation points when a read stops early is best effort
_SERVER_TIME = int(Flag.SERVER_TS | Flag.BACKFILL)
_HISTORY_READ = int(ua.AccessLevelType.HistoryRead)


def dv_ts_ns(dv: ua.DataValue) -> int | None:
    """A data value's source timestamp (else its server timestamp) in UTC ns, converted exactly as the live path
    converts it (:mod:`gateway.sources.opcua`), so that a value read live and from history has one timestamp."""
    dt = dv.SourceTimestamp or dv.ServerTimestamp
    return int(dt.timestamp() * 1e9) if dt is not None else None


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


@dataclass
class Backfilled:
    """What one :func:`backfill` did."""

    values: int = 0  # values handed to emit
    requests: int = 0  # HistoryRead requests made
    no_history: dict[str, str] = field(default_factory=dict)  # tag -> why the server has no history of it
    last_ts: dict[str, int] = field(default_factory=dict)  # tag -> source ts of the newest value emitted


@dataclass
class _Cursor:
    node: Node
    read_from: int  # source ts the next request starts at (inclusive)
    after: int  # only values newer than this are emitted (the stream holds the rest)
    until: int  # only values older than this are emitted (the live subscription has the rest)


async def without_history(client: Client, nodes: Mapping[str, Node]) -> dict[str, str]:
    """Tags whose node's UserAccessLevel lacks the HistoryRead bit (tag -> why): asking for their history is
    pointless."""
    tags, node_list = list(nodes), list(nodes.values())
    out: dict[str, str] = {}
    for start in range(0, len(node_list), NODES_PER_REQUEST * 10):
        dvs = await client.read_attributes(node_list[start : start + NODES_PER_REQUEST * 10],
                                           AttributeIds.UserAccessLevel)
        for tag, dv in zip(tags[start:], dvs, strict=False):
            level = dv.Value.Value if dv.Value is not None else None
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                out[tag] = f"UserAccessLevel unreadable ({dv.StatusCode.name})"
            elif isinstance(level, int) and not level & _HISTORY_READ:
                out[tag] = "the server does not historize it (no HistoryRead in its UserAccessLevel)"
    return out


async def backfill(
    client: Client,
    nodes: Mapping[str, Node],
    since: Mapping[str, int],
    until: Mapping[str, int],
    emit: Callable[[str, ua.DataValue], None],
    *,
    values_per_request: int = 1000,
    max_values_per_s: float = 20000.0,
) -> Backfilled:
    """Read every value of ``since[tag] < source ts < until[tag]`` from the server's history and ``emit(tag, dv)``
    each, in order per tag.

    Args:
        client: a connected session.
        nodes: tag -> node; only tags in ``since`` and ``until`` are read.
        since: tag -> source ts (UTC ns) of the newest value the stream holds (exclusive).
        until: tag -> source ts (UTC ns) from which live values cover the tag (exclusive).
        emit: called with each value read, from the event loop.
        values_per_request: NumValuesPerNode of one request.
        max_values_per_s: the pace: reading waits so as not to exceed it.

    Returns:
        What was read, and the tags the server has no history of. A failure of the session raises (UaError,
        OSError, TimeoutError); what was emitted before stays emitted.
    """
    done = Backfilled()
    cursors = {t: _Cursor(nodes[t], since[t], since[t], until[t]) for t in since if t in nodes and t in until
               and since[t] < until[t]}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while cursors:
        again: dict[str, _Cursor] = {}
        ordered = sorted(cursors.items(), key=lambda kv: kv[1].read_from)
        per_request = max(1, min(NODES_PER_REQUEST, MAX_VALUES_PER_REQUEST // max(values_per_request, 1)))
        for i in range(0, len(ordered), per_request):
            batch = dict(ordered[i : i + per_request])
            again.update(await _read_batch(client, batch, emit, values_per_request, done))
            if max_values_per_s and done.values:  # pace: never ahead of max_values_per_s since the start
                ahead = done.values / max_values_per_s - (loop.time() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        cursors = again
    return done


async def _read_batch(client: Client, batch: dict[str, _Cursor], emit: Callable[[str, ua.DataValue], None],
                      per_node: int, done: Backfilled) -> dict[str, _Cursor]:
    """One request over ``batch`` (their earliest start, their latest end), continuation points followed until
    exhausted. Returns the cursors of tags to read again (a server that cut a full page without a continuation
    point)."""
    start = min(c.read_from for c in batch.values())
    end = max(c.until for c in batch.values())
    details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=_dt(start), EndTime=_dt(end),
                                        NumValuesPerNode=per_node, ReturnBounds=False)
    pending: list[tuple[str, bytes | None]] = [(tag, None) for tag in batch]
    page: dict[str, int] = dict.fromkeys(batch, 0)  # values in the current page per tag (continuations included)
    last_seen: dict[str, int] = {}
    again: dict[str, _Cursor] = {}
    try:
        while pending:
            results = await client.uaclient.history_read(_params(details, batch, pending, release=False))
            done.requests += 1
            follow: list[tuple[str, bytes | None]] = []
            for (tag, _), res in zip(pending, results, strict=True):
                status = res.StatusCode
                if status is not None and not status.is_good() and not status.is_uncertain():
                    done.no_history[tag] = f"HistoryRead answered {status.name}"
                    continue
                dvs = getattr(res.HistoryData, "DataValues", None) or []
                page[tag] += len(dvs)
                _emit_page(tag, batch[tag], dvs, emit, done, last_seen)
                if res.ContinuationPoint:
                    follow.append((tag, res.ContinuationPoint))
                    continue
                cur, seen = batch[tag], last_seen.get(tag)
                # A full page without a continuation point: some servers cut at NumValuesPerNode without one
                # (asyncua's own). Read again from the last timestamp seen, if that moves forward.
                if page[tag] >= per_node and seen is not None and start < seen < cur.until:
                    again[tag] = _Cursor(cur.node, seen, cur.after, cur.until)
                page[tag] = 0
            pending = follow
    finally:
        if pending:  # stopped early (cancelled, the link failed): let the server free what it keeps for us
            await _release(client, details, batch, pending)
    return again


def _emit_page(tag: str, cur: _Cursor, dvs: list[ua.DataValue], emit: Callable[[str, ua.DataValue], None],
               done: Backfilled, last_seen: dict[str, int]) -> None:
    for dv in dvs:
        ts = dv_ts_ns(dv)
        if ts is None:
            continue
        last_seen[tag] = ts
        if cur.after < ts < cur.until:
            emit(tag, dv)
            cur.after = ts  # in order per tag: an older value after a newer one is not emitted
            done.values += 1
            done.last_ts[tag] = ts


def _params(details: ua.ReadRawModifiedDetails, batch: dict[str, _Cursor],
            pending: Sequence[tuple[str, bytes | None]], *, release: bool) -> ua.HistoryReadParameters:
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.ReleaseContinuationPoints = release
    params.NodesToRead = [ua.HistoryReadValueId(NodeId=batch[tag].node.nodeid, IndexRange=None,
                                                ContinuationPoint=cp) for tag, cp in pending]
    return params


async def _release(client: Client, details: ua.ReadRawModifiedDetails, batch: dict[str, _Cursor],
                   pending: list[tuple[str, bytes | None]]) -> None:
    held = [(tag, cp) for tag, cp in pending if cp]
    if not held:
        return
    try:
        await asyncio.wait_for(client.uaclient.history_read(_params(details, batch, held, release=True)),
                               RELEASE_TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError, OSError, ua.UaError, ConnectionError) as exc:
        log.debug("continuation points not released (%s): the server frees them with the session", exc)


class GapFiller:
    """One session's gap filling: the source creates it after resolving its nodes and before its first live value,
    tells it the first live value of each tag (:meth:`live`), and runs :meth:`run` as a task beside the
    subscription (or the polling loop), so live values are never delayed by it.

    ``emit(tag, dv)`` writes one value read from history (the source's conversion, flagged ``Flag.BACKFILL``).
    Where each tag's gap starts is taken at creation, and held (:meth:`LastStored.hold`) until the values read are
    stored: the live values of this session must not move it past the gap.
    """

    def __init__(self, cfg: OpcUaConnection, emitter: Emitter, tags: Iterable[str],
                 emit: Callable[[str, ua.DataValue], None]) -> None:
        self.cfg = cfg
        self.emitter = emitter
        self.emit = emit
        self.first_live: dict[str, int] = {}  # tag -> source ts of its first live value in this session
        self.started_ns = time.time_ns()
        self.held: dict[str, tuple[int, int]] = {}  # tag -> (source ts, gateway ts) the stream holds it up to
        self.task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # a first live value came
        if cfg.backfill.enabled:
            self.held = _held(emitter, tags)
            emitter.stored.hold({emitter.name_of(t): e[0] for t, e in self.held.items()})

    def start(self, client: Client, nodes: Mapping[str, Node]) -> None:
        """Run :meth:`run` as a task (when there is a gap to fill)."""
        if self.held:
            self.task = asyncio.create_task(self.run(client, nodes), name=f"backfill-{self.cfg.name}")

    async def stop(self) -> None:
        """Cancel the task (the session ends); what it emitted stays, its tags stay held where it got to."""
        if self.task is not None:
            await cancel_and_wait(self.task)  # history reads go through wait_for, which can lose the cancel

    def live(self, tag: str, ts_ns: int | None) -> None:
        """A live value of ``tag`` arrived (call for every one: only the first counts)."""
        if ts_ns is not None and tag not in self.first_live:
            self.first_live[tag] = ts_ns
            self._arrived.set()

    async def run(self, client: Client, nodes: Mapping[str, Node]) -> None:
        """Fill the gap of every tag the stream held before this session; never raises but for cancellation (a
        failing link ends the session through the subscription, which the next session's filler resumes)."""
        try:
            await self._run(client, nodes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the live values must go on whatever the history read did
            log.warning("connection %s: reading the gap from the server's history stopped (%s: %s); the next "
                        "session resumes it", self.cfg.name, type(exc).__name__, exc)

    async def _run(self, client: Client, nodes: Mapping[str, Node]) -> None:
        held, stored, name_of = self.held, self.emitter.stored, self.emitter.name_of
        if not held:
            return  # a first start (or backfill off): nothing was missed that anyone knows of
        for t in held:
            if t not in nodes:
                stored.release(name_of(t), None)
        waiting = {t for t in held if t in nodes}
        t0, done = time.monotonic(), Backfilled()
        await self._first_live_values(waiting, time.monotonic() + self._wait_s(), every=True)
        # Under load the subscription comes up late: a tag is read once its first live value says where its read
        # ends. Ending it at the session start instead would lose what the server made in between (bench at
        # f923c05: 66 of 52,451 values).
        deadline = time.monotonic() + max(LATE_LIVE_S, 10 * self._wait_s())
        while waiting:
            ready = {t for t in waiting if t in self.first_live}
            if not ready and not await self._first_live_values(waiting, deadline, every=False):
                self._read_to_now(waiting)
                continue
            until = {t: self.first_live[t] for t in waiting if t in self.first_live}
            await self._read(client, nodes, until, done)
            waiting -= until.keys()
        if done.values:
            log.info("connection %s: %d values of %d tags read from the server's history in %.1f s (%d requests), "
                     "written flagged backfill", self.cfg.name, done.values, len(done.last_ts),
                     time.monotonic() - t0, done.requests)
        self.emitter.counters.gap_open_since_ns = 0

    def _read_to_now(self, tags: set[str]) -> None:
        """No live value of ``tags`` came (a server that does not send a monitored item's first value): read their
        history up to now; a value also read live later is the same record id (:mod:`gateway.record`)."""
        now = time.time_ns()
        log.warning("connection %s: no live value of %d tags (%s) %.0f s into the session: their history is read "
                    "up to now", self.cfg.name, len(tags), ", ".join(sorted(tags)[:5]), (now - self.started_ns) / 1e9)
        for t in tags:
            self.first_live[t] = now

    async def _read(self, client: Client, nodes: Mapping[str, Node], until: dict[str, int], done: Backfilled) -> None:
        """Read the gap of each tag of ``until`` up to it; write gap records for what history cannot give."""
        settings, held, stored, name_of = self.cfg.backfill, self.held, self.emitter.stored, self.emitter.name_of
        oldest = self.started_ns - int(settings.max_span_s * 1e9)
        since = {t: max(held[t][0], oldest) for t in until if held[t][0] < until[t]}
        no_history = await without_history(client, {t: nodes[t] for t in since}) if since else {}
        for t in no_history:
            del since[t]
        cut = {t: held[t][1] for t in since if held[t][0] < oldest and held[t][1] < oldest}
        extra = self.emitter.counters.extra

        def emit(tag: str, dv: ua.DataValue) -> None:
            self.emit(tag, dv)
            extra["history_values_read"] = int(extra.get("history_values_read", 0)) + 1

        part = Backfilled()
        if since:
            part = await backfill(client, nodes, since, until, emit, values_per_request=settings.values_per_request,
                                  max_values_per_s=settings.max_values_per_s)
        # read to its end (or nothing to read): the tag no longer holds its timestamp once what was read is stored;
        # an interrupted read (an exception above) keeps holding, so the next session reads the rest
        for t in until:
            stored.release(name_of(t), part.last_ts.get(t))
        no_history.update(part.no_history)
        done.values, done.requests = done.values + part.values, done.requests + part.requests
        done.last_ts.update(part.last_ts)
        done.no_history.update(no_history)
        self._gap({t: held[t][1] for t in no_history}, self.started_ns, "no history on the server",
                  ua.StatusCodes.BadHistoryOperationUnsupported)
        self._gap(cut, oldest, f"older than backfill.max_span_s ({settings.max_span_s:g} s)", 0)

    def _wait_s(self) -> float:
        return max(FIRST_LIVE_WAIT_S, 3 * self.cfg.publishing_interval_ms / 1000, 2 * self.cfg.scan_interval_s)

    async def _first_live_values(self, tags: set[str], deadline: float, *, every: bool) -> bool:
        """Wait until the first live value of ``every`` tag (else of any) came, or the monotonic ``deadline``;
        True when it did. History is read up to it, the subscription has the rest: no value is written twice."""
        while True:
            missing = sum(t not in self.first_live for t in tags)
            if missing == 0 or (not every and missing < len(tags)):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return False

    def _gap(self, t1_by_tag: Mapping[str, int], t2: int, why: str, status: int) -> None:
        """One gap record for the tags whose values from t1 (when the stream last had them) to t2 are not there."""
        late = {t: t1 for t, t1 in t1_by_tag.items() if t1 < t2}
        if not late:
            return
        t1 = min(late.values())
        self.emitter.emit_gap(t1, t2, status)
        names = sorted(self.emitter.name_of(t) for t in late)
        log.warning("connection %s: no data from %s to %s (%.1f s) for %d tags (%s%s): %s; written as "
                    "collector/%s/gap", self.cfg.name, _iso(t1), _iso(t2), (t2 - t1) / 1e9, len(names),
                    ", ".join(names[:5]), ", ..." if len(names) > 5 else "", why, self.cfg.name)


def _held(emitter: Emitter, tags: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Per tag: (source ts, gateway ts) up to which the stream holds it: what the collector stored, or newer values
    still waiting in the emitter for the next flush (the previous session's last ones)."""
    pending: dict[str, tuple[int, int]] = {}
    for r in emitter.pending:
        if r.flags & _SERVER_TIME and r.kind == Kind.VALUE:
            pending[r.tag] = max(pending.get(r.tag, (0, 0)), (r.source_ts_ns, r.gateway_ts_ns))
    out = {}
    for tag in tags:
        name = emitter.name_of(tag)
        entry = max(emitter.stored.get(name) or (0, 0), pending.get(name, (0, 0)))
        if entry[0]:
            out[tag] = entry
    return out


def _iso(ns: int) -> str:
    return _dt(ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")
