"""What the stream holds of each tag of a connection: the newest server source timestamp stored, durably.

A source that fills gaps from its server's history (:mod:`gateway.sources.opcua_history`) reads from here where
the gap of each tag starts. The collector keeps it: after every append that succeeded it advances the tags of the
records it wrote and writes what moved, so the state on disk is never ahead of what the stream holds, and survives
kill -9 (the page cache does; no fsync).

On disk: ``<store>/state/<component>/last_source_ts/<connection>.json`` holds every tag (replaced atomically), and
``<connection>.journal`` beside it one JSON line per append with only the tags that moved. Rewriting every tag at
every append cost 0.8 ms for 1,000 tags, and group commit appends up to 100 times a second (issue 18); a line of the
~50 tags an append moves costs a few per cent of that, and the whole file is rewritten every ``COMPACT_EVERY`` lines.
Each rewrite starts a new generation: lines carry theirs, and only the file's own generation's lines are applied
on load, so a kill between a rewrite and the journal's removal never applies older lines over newer state.

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

COMPACT_EVERY = 200  # journal lines before the whole file is rewritten (and the journal starts again)
_SERVER_TIME = int(Flag.SERVER_TS | Flag.BACKFILL)  # ints: `&` with an IntFlag member goes through enum
_BACKFILL = int(Flag.BACKFILL)


class LastStored:
    """Per tag (its published name): (source ts, gateway ts) of the newest stored record carrying a server timestamp.

    The collector calls :meth:`advance` and :meth:`save` from its stream worker; a source calls :meth:`get`,
    :meth:`hold` and :meth:`release` from the event loop. A lock keeps both sides consistent.
    """

    def __init__(self, path: Path | None = None, tags: Mapping[str, tuple[int, int]] | None = None, *,
                 generation: int = 0, journal_lines: int | None = None) -> None:
        """``journal_lines`` None: there is no whole file of ``generation`` on disk (the next save writes one)."""
        self.path = path
        self._tags: dict[str, tuple[int, int]] = dict(tags or {})
        self._holds: dict[str, list[int]] = {}  # tag -> [newest backfilled ts stored, last ts to store or -1]
        self._lock = threading.Lock()
        self._dirty = False
        self._changed: set[str] = set()  # tags whose durable timestamps moved since the last save
        self._generation = generation
        self._lines = journal_lines

    @classmethod
    def load(cls, path: Path | None) -> LastStored:
        """The state kept at ``path`` and its journal (empty when there is none; a damaged file is logged and started
        afresh; a journal line cut short by a kill ends the journal)."""
        if path is None:
            return cls()
        try:
            data = json.loads(path.read_bytes())
            tags = {str(t): (int(v[0]), int(v[1])) for t, v in data["tags"].items()}
            generation = int(data.get("generation", 0))
        except FileNotFoundError:
            return cls(path)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            log.warning("%s is damaged (%s): the next gap of this connection is not filled from history; it is "
                        "rewritten at the next write", path, exc)
            return cls(path)
        lines = 0
        try:
            with open(_journal(path), "rb") as f:
                for line in f:
                    entry = json.loads(line)
                    if entry["g"] == generation:
                        tags.update({str(t): (int(v[0]), int(v[1])) for t, v in entry["tags"].items()})
                        lines += 1
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            log.warning("%s: a line is cut short or damaged (%s): the lines before it are applied", _journal(path), exc)
            lines = COMPACT_EVERY  # rewrite the whole file at the next save, which drops the journal
        return cls(path, tags, generation=generation, journal_lines=lines)

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
            self._changed.update(tags)
            self._dirty = True

    def release(self, tag: str, last_ts: int | None) -> None:
        """The backfill of ``tag`` emitted everything; ``last_ts`` is the newest value it emitted (None: nothing).
        The hold ends once that value is stored."""
        with self._lock:
            held = self._holds.get(tag)
            if held is None:
                return
            if last_ts is None or held[0] >= last_ts:
                del self._holds[tag]
                self._changed.add(tag)
                self._dirty = True
            else:
                held[1] = last_ts

    def advance(self, records: Iterable[Record]) -> bool:
        """Take the records just appended; True when a tag moved (then :meth:`save`)."""
        moved = False
        with self._lock:
            tags, holds, changed = self._tags, self._holds, self._changed
            for r in records:
                if not r.flags & _SERVER_TIME or r.kind != Kind.VALUE:
                    continue
                if r.flags & _BACKFILL:
                    held = holds.get(r.tag)
                    if held is not None and r.source_ts_ns > held[0]:
                        held[0] = r.source_ts_ns
                        if 0 <= held[1] <= held[0]:
                            del holds[r.tag]
                        changed.add(r.tag)
                        moved = True
                entry = tags.get(r.tag)
                if entry is None or r.source_ts_ns > entry[0] or (r.source_ts_ns == entry[0] and
                                                                  r.gateway_ts_ns > entry[1]):
                    tags[r.tag] = (r.source_ts_ns, r.gateway_ts_ns)
                    changed.add(r.tag)
                    moved = True
            self._dirty = self._dirty or moved
        return moved

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every tag's durable (source ts, gateway ts): holds applied."""
        with self._lock:
            return {tag: self._durable(tag) or entry for tag, entry in self._tags.items()}

    def save(self) -> None:
        """Write what moved since the last save (no fsync: like the collector's marker, it must survive a process
        kill, which the page cache does; after a power cut an older state only re-reads more history)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            changed, self._changed, self._dirty = self._changed, set(), False
            whole = self._lines is None or self._lines >= COMPACT_EVERY
            if whole:
                generation = self._generation + 1
                doc = {"version": 1, "generation": generation,
                       "tags": {t: list(self._durable(t) or e) for t, e in self._tags.items()}}
            else:
                moved = {t: list(d) for t in changed if (d := self._durable(t)) is not None}
                doc = {"g": self._generation, "tags": moved}
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            if whole:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, data, sync=False)
                self._generation, self._lines = generation, 0
                _journal(self.path).unlink(missing_ok=True)  # its lines are the old generation's: never applied
            else:
                with open(_journal(self.path), "ab") as f:
                    f.write(data + b"\n")
                self._lines = (self._lines or 0) + 1
        except BaseException:
            with self._lock:  # written again at the next save
                self._changed |= changed
                self._dirty = True
                if not whole:
                    self._lines = COMPACT_EVERY  # a line may be cut short: the next save rewrites the whole file
            raise


def _journal(path: Path) -> Path:
    return path.with_suffix(".journal")
