"""Bounded in-memory history of the OPC UA endpoint's process tags (OPC UA Part 11, HistoryReadRawModified).

The simulator historizes every process tag so that a client which missed values (a collector killed for a while)
can read them back. asyncua's built-in pieces do not fit a plant that changes ~10,000 values a second:
``historize_node_data_change`` feeds the storage through an internal subscription (the endpoint would then push
every value of every tag to a monitored item, work it otherwise does only for tags a client watches), and its
``HistoryDict`` drops old values with ``list.pop(0)`` and scans the whole list on every read. Here instead:

- :class:`TagHistory`: one tag's values in a ring of parallel arrays (timestamp µs, value, status code: 20 bytes a
  value), oldest first, bounded by a count and by an age (whichever is reached first); reads binary-search it.
- :class:`RingHistory`: asyncua's ``HistoryStorageInterface`` over those rings, fed synchronously by the endpoint
  (:meth:`RingHistory.record`) with every published snapshot, and safe to feed from another thread.
- :class:`HistoryService`: asyncua's ``HistoryManager`` answering, as servers do, ``BadHistoryOperationUnsupported``
  for a node that is not historized (instead of an empty Good answer a client cannot tell from "no changes"),
  ``BadHistoryOperationInvalid`` when neither bound of the interval is given, and nothing for a node whose
  continuation point the request releases.

Continuation points are stateless (asyncua's scheme): the source timestamp of the first value not returned, from
which the next request reads on. A tag's timestamps strictly increase, so no value is returned twice or skipped.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from asyncua import ua as _ua
from asyncua.server.history import HistoryManager, HistoryStorageInterface

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

__all__ = ["HistoryService", "RingHistory", "TagHistory", "to_us"]

# asyncua's NewType-based annotations reject the plain values its runtime accepts (see opcua_server.py).
ua: Any = _ua

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_UNSET = ua.get_win_epoch()  # how OPC UA encodes "no time given" (1601-01-01)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)
_DOUBLE = ua.VariantType.Double
_MIN_SIZE = 64  # first allocation of a ring; it doubles up to its count bound


def to_us(stamp: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (a naive datetime is taken as UTC)."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return (stamp - _EPOCH) // _US


def _stamp(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class TagHistory:
    """One tag's history: at most ``max_values`` values, none older than ``retention_us`` before the newest.

    Values are appended in strictly increasing timestamp order (an older or equal timestamp is refused), which is
    what makes the binary search and the stateless continuation points right.
    """

    __slots__ = ("_bad", "_count", "_start", "_ts", "_values", "max_values", "retention_us")

    def __init__(self, max_values: int, retention_us: int) -> None:
        if max_values < 1 or retention_us < 1:
            raise ValueError(f"history bounds must be positive: {max_values} values, {retention_us} µs")
        self.max_values = max_values
        self.retention_us = retention_us
        self._ts = array("q")
        self._values = array("d")
        self._bad = array("I")  # OPC UA status code, 0 for Good
        self._start = 0  # physical index of the oldest value
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def newest_us(self) -> int | None:
        """Timestamp of the newest value, None when empty."""
        return self._ts[(self._start + self._count - 1) % len(self._ts)] if self._count else None

    def append(self, ts_us: int, value: float, status: int = 0) -> bool:
        """Add the newest value; False (nothing stored) when ``ts_us`` is not after the newest one's."""
        newest = self.newest_us
        if newest is not None and ts_us <= newest:
            return False
        self._expire(ts_us - self.retention_us)
        size = len(self._ts)
        if self._count == size:
            if size < self.max_values:
                self._grow(min(self.max_values, max(_MIN_SIZE, 2 * size)))
                size = len(self._ts)
            else:  # full at the count bound: the oldest goes
                self._start = (self._start + 1) % size
                self._count -= 1
        at = (self._start + self._count) % size
        self._ts[at], self._values[at], self._bad[at] = ts_us, value, status
        self._count += 1
        return True

    def index(self, ts_us: int, after: bool = False) -> int:
        """Logical index (0 = oldest) of the first value at or after ``ts_us`` (strictly after with ``after``)."""
        ts, start, size = self._ts, self._start, len(self._ts)
        positions = range(self._count)
        if after:
            return bisect_right(positions, ts_us, key=lambda i: ts[(start + i) % size])
        return bisect_left(positions, ts_us, key=lambda i: ts[(start + i) % size])

    def rows(self, lo: int, hi: int) -> list[tuple[int, float, int]]:
        """``(timestamp µs, value, status)`` of logical indexes ``lo`` (inclusive) to ``hi`` (exclusive)."""
        ts, values, bad, start, size = self._ts, self._values, self._bad, self._start, len(self._ts)
        out = []
        for i in range(max(lo, 0), min(hi, self._count)):
            p = (start + i) % size
            out.append((ts[p], values[p], bad[p]))
        return out

    def _expire(self, oldest_kept_us: int) -> None:
        ts, size = self._ts, len(self._ts)
        while self._count and ts[self._start] < oldest_kept_us:
            self._start = (self._start + 1) % size
            self._count -= 1

    def _grow(self, size: int) -> None:
        """Re-allocate to ``size`` slots with the values in order from slot 0."""
        old = self.rows(0, self._count)
        extra = size - self._count
        self._ts = array("q", [r[0] for r in old]) + array("q", bytes(8 * extra))
        self._values = array("d", [r[1] for r in old]) + array("d", bytes(8 * extra))
        self._bad = array("I", [r[2] for r in old]) + array("I", bytes(4 * extra))
        self._start = 0


class RingHistory(HistoryStorageInterface):
    """asyncua history storage of bounded rings, one per historized node (no events).

    Args:
        retention_s: how long a value is kept (measured back from the tag's newest value).
        max_values: the most values kept per tag, whatever their age: bounds memory at 20 bytes a value.
        max_response: the most values one HistoryRead answer carries per node; the rest follows through a
            continuation point.
    """

    def __init__(self, retention_s: float, max_values: int, max_response: int = 10_000) -> None:
        super().__init__(max_response)
        if retention_s <= 0 or max_values < 1 or max_response < 1:
            raise ValueError(f"history needs retention_s > 0, max_values >= 1 and max_response >= 1, not "
                             f"{retention_s}, {max_values}, {max_response}")
        self.retention_us = int(retention_s * 1e6)
        self.max_values = max_values
        self._tags: dict[Any, TagHistory] = {}
        self._lock = threading.Lock()  # the endpoint may record from the simulation's threads

    def historized(self, node_id: Any) -> bool:
        return node_id in self._tags

    def values(self, node_id: Any) -> int:
        """How many values the node's history holds now."""
        with self._lock:
            return len(self._tags[node_id])

    def record(self, node_id: Any, stamp: datetime | int, value: float | None, status: int = 0) -> bool:
        """Store one value (None: no value, as with a Bad status); False when not newer than the last one."""
        ts_us = stamp if isinstance(stamp, int) else to_us(stamp)
        with self._lock:
            return self._tags[node_id].append(ts_us, float("nan") if value is None else value, status)

    def record_many(self, rows: Iterable[tuple[Any, int, float | None, int]]) -> None:
        """Store ``(node id, timestamp µs, value, status)`` rows under one lock (a snapshot's changes)."""
        nan, tags = float("nan"), self._tags
        with self._lock:
            for node_id, ts_us, value, status in rows:
                tags[node_id].append(ts_us, nan if value is None else value, status)

    # ------------------------------------------------------------ HistoryStorageInterface
    async def init(self) -> None:
        """Nothing to open: the history lives in memory."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def new_historized_node(self, node_id: Any, period: timedelta | None, count: int = 0) -> None:
        """Start a history for ``node_id``; ``period``/``count`` tighten the storage's own bounds if given."""
        retention = self.retention_us if period is None else min(self.retention_us, period // _US)
        max_values = min(count, self.max_values) if count else self.max_values
        with self._lock:
            if node_id in self._tags:
                raise ua.UaError(f"node {node_id} is already historized")
            self._tags[node_id] = TagHistory(max_values, retention)

    async def save_node_value(self, node_id: Any, datavalue: Any) -> None:
        """Store a DataValue (the interface's path; the endpoint calls :meth:`record` directly)."""
        stamp = datavalue.SourceTimestamp or datavalue.ServerTimestamp or datetime.now(timezone.utc)
        variant = datavalue.Value
        value = None if variant is None or variant.Value is None else float(variant.Value)
        status = datavalue.StatusCode.value if datavalue.StatusCode is not None else 0
        self.record(node_id, stamp, value, status)

    async def read_node_history(
        self, node_id: Any, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[Any], datetime | None]:
        """Values between ``start`` and ``end`` (both inclusive), at most ``nb_values`` (0: no limit) per answer.

        ``start`` after ``end`` reads backwards (newest first). With only ``start`` given, forwards to the newest
        value; with only ``end`` given, the ``nb_values`` newest values up to ``end``, newest first, in one answer
        (a stateless continuation point cannot express "further back" here: give both bounds to page backwards).
        Returns the DataValues and the timestamp to continue from, None when nothing is left.
        """
        tag = self._tags.get(node_id)
        no_start = start is None or start <= _UNSET
        no_end = end is None or end <= _UNSET
        if tag is None or (no_start and no_end):
            return [], None
        page = min(nb_values, self.max_history_data_response_size) if nb_values else \
            self.max_history_data_response_size
        with self._lock:  # copy the rows out; DataValues are built outside the lock
            if no_start:
                assert end is not None
                hi = tag.index(to_us(end), after=True)
                rows = tag.rows(hi - page, hi)[::-1]
                return [_data_value(r) for r in rows], None
            assert start is not None
            if end is None or no_end or start <= end:  # forwards
                lo = tag.index(to_us(start))
                hi = len(tag) if end is None or no_end else tag.index(to_us(end), after=True)
                rows = tag.rows(lo, min(hi, lo + page + 1))
            else:  # backwards, from start down to end
                lo, hi = tag.index(to_us(end)), tag.index(to_us(start), after=True)
                rows = tag.rows(max(lo, hi - page - 1), hi)[::-1]
        cont = None
        if len(rows) > page:
            cont = _stamp(rows[page][0])
            rows = rows[:page]
        return [_data_value(r) for r in rows], cont

    async def new_historized_event(self, source_id: Any, evtypes: list[Any], period: timedelta | None,
                                   count: int = 0) -> None:
        raise ua.UaError("the simulator historizes data changes only, not events")

    async def save_event(self, event: Any) -> None:
        """Events are not historized (nothing asks for it: :meth:`new_historized_event` refuses)."""

    async def read_event_history(self, source_id: Any, start: datetime | None, end: datetime | None,
                                 nb_values: int, evfilter: Any) -> tuple[list[Any], datetime | None]:
        return [], None


def _data_value(row: tuple[int, float, int]) -> Any:
    ts_us, value, status = row
    stamp = _stamp(ts_us)
    if status:
        return ua.DataValue(None, ua.StatusCode(status), stamp, stamp)
    return ua.DataValue(ua.Variant(value, _DOUBLE), _GOOD, stamp, stamp)


class HistoryService(HistoryManager):
    """asyncua's history manager over a :class:`RingHistory`, with the status codes a client needs to act on."""

    def __init__(self, iserver: InternalServer, storage: RingHistory) -> None:
        super().__init__(iserver)
        self.storage = storage
        self.rings = storage

    async def read_history(self, params: Any) -> list[Any]:
        details = params.HistoryReadDetails
        results = []
        for rv in params.NodesToRead:
            refusal = None
            if params.ReleaseContinuationPoints and rv.ContinuationPoint:
                # the client frees a point: stateless here, nothing to free and nothing to read. Without a point
                # the flag is ignored and the node read: asyncua's HistoryReadParameters default it to true.
                refusal = ua.StatusCodes.Good
            elif isinstance(details, ua.ReadRawModifiedDetails):
                if not self.rings.historized(rv.NodeId):
                    refusal = ua.StatusCodes.BadHistoryOperationUnsupported
                elif not rv.ContinuationPoint and _unset(details.StartTime) and _unset(details.EndTime):
                    refusal = ua.StatusCodes.BadHistoryOperationInvalid
            if refusal is not None:
                results.append(ua.HistoryReadResult(StatusCode=ua.StatusCode(refusal)))
                continue
            one = ua.HistoryReadParameters(HistoryReadDetails=details, TimestampsToReturn=params.TimestampsToReturn,
                                           ReleaseContinuationPoints=False, NodesToRead=[rv])
            results.extend(await super().read_history(one))
        return results


def _unset(stamp: datetime | None) -> bool:
    return stamp is None or stamp <= _UNSET
