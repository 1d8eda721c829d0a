"""Durable reader positions: where each reader (a destination, the anomaly component) stands in each stream.

Stream manager has no server-side reader positions, so both stream implementations keep them here, in small files
replaced atomically. A position is the next sequence number to read; it only moves forward over what the reader
has handled, so after a crash the reader re-reads what it had not committed (at-least-once).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from gateway.errors import ConfigError
from gateway.fsutil import atomic_write

_NAME = re.compile(r"^[\w ,.\-]{1,255}$")


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

    def _path(self, reader: str, stream: str) -> Path:
        for what, name in (("reader", reader), ("stream", stream)):
            if not _NAME.match(name) or name in (".", ".."):
                raise ConfigError(
                    f"{what} name {name!r} cannot be used for a position file",
                    fix="use letters, digits, space, comma, dot, dash or underscore",
                )
        return self.root / reader / f"{stream}.pos"
