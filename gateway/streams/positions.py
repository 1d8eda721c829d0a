"""Durable reader positions: where each reader (a destination, the anomaly component) stands in each stream.

Stream manager has no server-side reader positions, so both stream implementations keep them here, in small files
replaced atomically. A position is the next sequence number to read; it only moves forward over what the reader
has handled, so after a crash the reader re-reads what it had not committed (at-least-once).

Losses live here too, beside the positions, so that they outlive the process that saw them: ``<owner>/<stream>.lost``
holds cumulative counts (messages a reader found dropped before it read them, values a collector dropped, collector
gaps), written only by the owner; ``<owner>/<stream>.ack`` holds what an operator acknowledged
(``gatewayctl buffer --ack-losses``), written only by gatewayctl, so the two never race. What is counted but not
acknowledged is shown by ``gatewayctl status``, ``buffer`` and ``doctor``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from gateway.counters import current_names
from gateway.errors import ConfigError
from gateway.fsutil import atomic_write

_NAME = re.compile(r"^[\w ,.\-]{1,255}$")
# Loss counters, in the order they are shown: messages a reader never got (overwritten, time to live), values a
# collector read but could not write, times a collector was not reading and the seconds that lasted.
LOSS_KEYS = ("messages_lost", "values_dropped", "gaps", "gap_s")


class PositionStore:
    """Positions under ``root/<reader>/<stream>.pos``."""

    def __init__(self, root: str | Path, *, sync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sync = sync

    def get(self, reader: str, stream: str) -> int | None:
        """The committed next sequence number, or None if the reader never committed on this stream."""
        try:
            data = json.loads(self._path(reader, stream).read_bytes())
            return int(data["next_seq"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"reader position file {self._path(reader, stream)} is corrupt: {exc}",
                fix="delete the file to make the reader start again from the oldest retained data "
                "(destinations drop duplicates by record id)",
            ) from exc

    def commit(self, reader: str, stream: str, next_seq: int) -> None:
        """Record that ``reader`` handled everything before ``next_seq`` in ``stream``."""
        path = self._path(reader, stream)
        path.parent.mkdir(exist_ok=True)
        payload = json.dumps({"next_seq": next_seq, "updated_ns": time.time_ns()}).encode()
        atomic_write(path, payload, sync=self._sync)

    def all(self) -> dict[str, dict[str, int]]:
        """Every reader's positions, for ``gatewayctl buffer``."""
        out: dict[str, dict[str, int]] = {}
        for reader_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for pos in sorted(reader_dir.glob("*.pos")):
                value = self.get(reader_dir.name, pos.stem)
                if value is not None:
                    out.setdefault(reader_dir.name, {})[pos.stem] = value
        return out

    def add_losses(self, owner: str, stream: str, **counts: float) -> None:
        """Add to the cumulative loss counters of ``owner`` on ``stream`` (keys from :data:`LOSS_KEYS`)."""
        path = self._path(owner, stream).with_name(f"{stream}.lost")
        self._write_losses(path, self._read_json(path), counts)

    def _write_losses(self, path: Path, data: dict[str, Any], counts: dict[str, float], **extra: int) -> None:
        now = time.time_ns()
        for key, n in counts.items():
            data[key] = data.get(key, 0) + n
        data.update(extra)
        data.setdefault("first_ns", now)
        data["updated_ns"] = now
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, json.dumps(data).encode(), sync=self._sync)

    def count_gap(self, reader: str, stream: str, start: int, end: int) -> int:
        """Count messages ``start``..``end - 1`` as lost to ``reader``, once: a reader that re-reads after a restart
        (it had not committed past the gap) sees the same gap again. Returns how many were not counted before."""
        path = self._path(reader, stream).with_name(f"{stream}.lost")
        data = self._read_json(path)
        through = int(data.get("lost_through_seq", 0))
        new = max(0, end - max(start, through))
        if new:
            self._write_losses(path, data, {"messages_lost": new}, lost_through_seq=max(through, end))
        return new

    def losses(self) -> list[dict[str, Any]]:
        """Every owner's loss counters: ``counts`` (cumulative), ``acknowledged`` and ``unacknowledged``."""
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for owner_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(owner_dir.glob("*.lost")):
                counts = self._read_json(path)
                acked = self._read_json(path.with_suffix(".ack"))
                row = {k: counts.get(k, 0) for k in LOSS_KEYS}
                open_ = {k: round(row[k] - acked.get(k, 0), 3) for k in LOSS_KEYS if row[k] - acked.get(k, 0) > 0}
                out.append({"owner": owner_dir.name, "stream": path.stem, "counts": row,
                            "acknowledged": {k: acked.get(k, 0) for k in LOSS_KEYS}, "unacknowledged": open_,
                            "updated_ns": counts.get("updated_ns"), "acknowledged_ns": acked.get("updated_ns")})
        return out

    def acknowledge(self) -> list[dict[str, Any]]:
        """Acknowledge every loss counted so far; returns the rows that had something unacknowledged."""
        done = []
        for row in self.losses():
            if row["unacknowledged"]:
                path = self._path(row["owner"], row["stream"]).with_name(f"{row['stream']}.ack")
                atomic_write(path, json.dumps({**row["counts"], "updated_ns": time.time_ns()}).encode(),
                             sync=self._sync)
                done.append(row)
        return done

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a damaged counter file: counting starts again rather than stopping a reader
        # counts written by the previous version, under its names (lost_messages), go on under today's
        return current_names(data) if isinstance(data, dict) else {}

    def _path(self, reader: str, stream: str) -> Path:
        for what, name in (("reader", reader), ("stream", stream)):
            if not _NAME.match(name) or name in (".", ".."):
                raise ConfigError(
                    f"{what} name {name!r} cannot be used for a position file",
                    fix="use letters, digits, space, comma, dot, dash or underscore",
                )
        return self.root / reader / f"{stream}.pos"
