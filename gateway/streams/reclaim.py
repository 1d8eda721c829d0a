"""Who holds a full RejectNewData stream of the embedded store: the readers' committed positions.

The embedded store frees, when a RejectNewData stream is full, the segments wholly below the lowest position any
reader committed on it. A stream's readers are its position files (``positions/<reader>/<stream>.pos``, see
:mod:`gateway.streams.positions`): every reader that ever committed on it. A reader that never committed is
unknown, so a stream without any position file frees nothing: RejectNewData promises to keep the oldest data, and
a reader that has yet to start (a publisher deployed after the collector) must find it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.errors import ConfigError
from gateway.streams.positions import PositionStore

log = logging.getLogger("gateway.streams.embedded")


def committed_positions(folder: Path, stream: str) -> dict[str, int]:
    """Reader name -> committed position of every position file ``stream`` has under ``folder``.

    An unreadable position file makes it {} (free nothing): its reader reports the file when it starts.
    """
    if not folder.is_dir():
        return {}
    store = PositionStore(folder, sync=False)
    out: dict[str, int] = {}
    for reader in sorted(p.name for p in folder.iterdir() if (p / f"{stream}.pos").is_file()):
        try:
            pos = store.get(reader, stream)
        except ConfigError as exc:
            log.warning("stream %r is full and frees nothing: %s", stream, exc.message)
            return {}
        if pos is not None:
            out[reader] = pos
    return out


def full_fix(positions: dict[str, int]) -> str:
    """The fix for a full RejectNewData stream of the embedded store, given its readers' positions."""
    if not positions:
        return ("no reader has committed a position on this stream yet, and RejectNewData frees only what every "
                "reader committed: start its readers (the publisher, the anomaly component), or raise "
                "max_size_bytes, or use OverwriteOldestData to keep the newest data instead")
    floor = min(positions.values())
    slowest = ", ".join(r for r, p in positions.items() if p == floor)
    return (f"reader(s) {slowest} at sequence number {floor} hold the oldest data: let them catch up (is a "
            "destination down?); a reader that was removed leaves its file positions/READER/STREAM.pos behind, "
            "delete it; or raise max_size_bytes, or use OverwriteOldestData to keep the newest data instead")
