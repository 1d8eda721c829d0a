"""What the stream holds of each tag of a connection: the newest server source timestamp stored, durably.

A source that fills gaps from its server's history (:mod:`gateway.sources.opcua_history`) reads from here where
the gap of each tag starts. The collector keeps it: after every append that succeeded it advances the tags of the
records it wrote, then replaces the file ``<store>/state/<component>/last_source_ts/<connection>.json`` (one atomic
write per flush, like its marker); so the file is never ahead of what the stream holds, and survives kill -9.

Only records whose source timestamp is the server's count (``Flag.SERVER_TS`` or ``Flag.BACKFILL``): a record the
gateway stamped itself (a BAD value when the link went) says nothing about what the server has. The file holds one
entry per tag the connection ever wrote with a server timestamp, so it is bounded by the configured (or browsed) tags.

A backfill in progress *holds* its tags: until the last value it read is stored, a tag's durable timestamp stays
at the newest backfilled value stored (not at the newer live values stored meanwhile), so that a kill during a
backfill resumes it instead of skipping what it had not written yet.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.fsutil import atomic_write
from gateway.record import Flag, Kind, Record

log = logging.getLogger(__name__)

_SERVER_TIME = int(Flag.SERVER_TS | Flag.BACKFILL)  # ints: `&` with an IntFlag member goes through enum
_BACKFILL = int(Flag.BACKFILL)


class LastStored:
    """Per tag (its published name): (source ts, gateway ts) of the newest stored record carrying a server timestamp.

    The collector calls :meth:`advance` and :meth:`save` from its stream worker; a source calls :meth:`get`,
    :meth:`hold` and :meth:`release` from the event loop. A lock keeps both sides consistent.
    """

    def __init__(self, path: Path | None = None, tags: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.path = path
        self._tags: dict[str, tuple[int, int]] = dict(tags or {})
        self._holds: dict[str, list[int]] = {}  # tag -> [newest backfilled ts stored, last ts to store or -1]
        self._lock = threading.Lock()
        self._dirty = False

    @classmethod
    def load(cls, path: Path | None) -> LastStored:
        """The state kept at ``path`` (empty when there is none; a damaged file is logged and started afresh)."""
        if path is None:
            return cls()
        try:
            data = json.loads(path.read_bytes())
            tags = {str(t): (int(v[0]), int(v[1])) for t, v in data["tags"].items()}
        except FileNotFoundError:
            return cls(path)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            log.warning("%s is damaged (%s): the next gap of this connection is not filled from history; it is "
                        "rewritten at the next write", path, exc)
            return cls(path)
        return cls(path, tags)

    def get(self, tag: str) -> tuple[int, int] | None:
        """(source ts, gateway ts) up to which the stream holds ``tag`` without a hole, or None if never stored."""
        with self._lock:
            return self._durable(tag)

    def _durable(self, tag: str) -> tuple[int, int] | None:
        entry = self._tags.get(tag)
        held = self._holds.get(tag)
        if entry is None or held is None or held[0] >= entry[0]:
            return entry
        return held[0], entry[1]

    def hold(self, tags: Mapping[str, int]) -> None:
        """Start a backfill of ``tags`` (tag -> source ts it starts after): their durable timestamps stay there
        until :meth:`release` and the values it names are stored."""
        with self._lock:
            for tag, since in tags.items():
                self._holds[tag] = [since, -1]

    def release(self, tag: str, last_ts: int | None) -> None:
        """The backfill of ``tag`` emitted everything; ``last_ts`` is the newest value it emitted (None: nothing).
        The hold ends once that value is stored."""
        with self._lock:
            held = self._holds.get(tag)
            if held is None:
                return
            if last_ts is None or held[0] >= last_ts:
                del self._holds[tag]
            else:
                held[1] = last_ts

    def advance(self, records: Iterable[Record]) -> bool:
        """Take the records just appended; True when a tag moved (then :meth:`save`)."""
        moved = False
        with self._lock:
            tags, holds = self._tags, self._holds
            for r in records:
                if not r.flags & _SERVER_TIME or r.kind != Kind.VALUE:
                    continue
                if r.flags & _BACKFILL:
                    held = holds.get(r.tag)
                    if held is not None and r.source_ts_ns > held[0]:
                        held[0] = r.source_ts_ns
                        if 0 <= held[1] <= held[0]:
                            del holds[r.tag]
                        moved = True
                entry = tags.get(r.tag)
                if entry is None or r.source_ts_ns > entry[0] or (r.source_ts_ns == entry[0] and
                                                                  r.gateway_ts_ns > entry[1]):
                    tags[r.tag] = (r.source_ts_ns, r.gateway_ts_ns)
                    moved = True
            self._dirty = self._dirty or moved
        return moved

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every tag's durable (source ts, gateway ts): holds applied."""
        with self._lock:
            return {tag: self._durable(tag) or entry for tag, entry in self._tags.items()}

    def save(self) -> None:
        """Replace the file with the durable state (no fsync: like the collector's marker, it must survive a
        process kill, which the page cache does; after a power cut an older file only re-reads more history)."""
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        data = {"version": 1, "tags": {t: list(v) for t, v in self.snapshot().items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode(), sync=False)
        except BaseException:
            self._dirty = True  # written again after the next append
            raise
