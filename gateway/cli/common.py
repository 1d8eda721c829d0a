"""What the gatewayctl commands share: the store, the components' status files, time arguments and output.

Status files are the components' counters, written every ``status_interval_s`` to ``<store>/status/<component>.json``
(atomically). Under Greengrass each component has its own work folder, so the status folders of
``<greengrass root>/work/*/<store>/status`` are read too, and :func:`core_setup` (:mod:`gateway.cli.core`) says
in one line when they belong to another user, or, as root, borrows a running component's IPC and stream manager
access. Nothing here imports the protocol SDKs: gatewayctl must start fast on a small gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import core
from gateway.endpoints import host_port
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.streams.base import StreamStore

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2
DEFAULT_STORE = "data"
SELF_READERS = ("gatewayctl-tail", "gatewayctl-replay")  # never committed; hidden from backlog views


def core_setup(args: argparse.Namespace) -> None:
    """Once per run, next to a Greengrass core (``--greengrass-root`` has factoryedge work folders): refuse in one
    line when this user cannot read them (without ``--store``), else borrow a running component's credentials (IPC,
    stream manager) and default ``--stream-manager`` to its port. Elsewhere: nothing."""
    if getattr(args, "core_checked", False):
        return
    args.core_checked = True
    root = Path(getattr(args, "greengrass_root", None) or core.DEFAULT_ROOT)
    if not getattr(args, "store", None):
        problem = core.unreadable(root, sys.argv[1:])
        if problem is not None:
            raise problem
    if os.environ.get("SVCUID") or not core.work_folders(root):
        return  # already a Greengrass identity (a component's own shell), or no core here
    borrowed = core.borrow(root)
    if borrowed is None:
        return
    core.use(borrowed)
    if not getattr(args, "stream_manager", None) and not getattr(args, "store", None):
        args.stream_manager = f"127.0.0.1:{borrowed.stream_manager_port}"


def store_dir(args: argparse.Namespace) -> Path:
    """The embedded store folder: ``--store``, else the first loaded configuration's ``store.path``, else (on a
    core) the publisher's store in its work folder, which holds the destinations' positions, else ./data."""
    given = getattr(args, "store", None)
    if given:
        return Path(given)
    configs: list[Any] = getattr(args, "loaded_configs", None) or []
    for loaded in configs:
        if loaded.store_path:
            return Path(loaded.base_dir) / str(loaded.store_path)
    folders = core.work_folders(Path(getattr(args, "greengrass_root", None) or core.DEFAULT_ROOT))
    for folder in sorted(folders, key=lambda f: f.name != "factoryedge.Publisher"):
        if (folder / DEFAULT_STORE).is_dir():
            return folder / DEFAULT_STORE
    return Path(DEFAULT_STORE)


def open_store(args: argparse.Namespace, *, connect_timeout_s: float = 3.0) -> StreamStore:
    """The stream store gatewayctl reads: stream manager with ``--stream-manager``, the embedded store otherwise."""
    core_setup(args)
    target = getattr(args, "stream_manager", None)
    if target:
        from gateway.streams.stream_manager import StreamManagerStore

        host, port = host_port(target, what="--stream-manager", default_host="127.0.0.1")
        return StreamManagerStore(host, port, connect_timeout_s=connect_timeout_s)
    from gateway.streams.embedded import EmbeddedStore

    folder = store_dir(args)
    if not (folder / "streams").is_dir():
        raise ConfigError(f"no embedded store at {folder} (no streams folder)",
                          fix="pass --store with the components' store.path, or --config with their configuration")
    return EmbeddedStore(folder)


def status_dirs(args: argparse.Namespace) -> list[Path]:
    dirs = [store_dir(args) / "status"]
    work = Path(getattr(args, "greengrass_root", None) or "/greengrass/v2") / "work"
    if work.is_dir():
        dirs += sorted(work.glob("*/*/status"))
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def read_statuses(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """component name -> its last status (the newest when several folders have one)."""
    core_setup(args)
    found: dict[str, dict[str, Any]] = {}
    for folder in status_dirs(args):
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # replaced atomically, so only a foreign file can be unreadable
            if not isinstance(data, dict):
                continue
            name = str(data.get("component") or path.stem)
            data["_path"] = str(path)
            if name not in found or data.get("updated_ns", 0) > found[name].get("updated_ns", 0):
                found[name] = data
    return found


def unacknowledged_losses(store: Path | str) -> list[dict[str, Any]]:
    """Loss counters not acknowledged yet (``gatewayctl buffer --ack-losses``), from the store's positions folder."""
    from gateway.streams.positions import PositionStore

    folder = Path(store) / "positions"
    if not folder.is_dir():
        return []
    return [r for r in PositionStore(folder).losses() if r["unacknowledged"]]


def fmt_losses(counts: dict[str, Any]) -> str:
    """Loss counters as one line: ``messages_lost 3, bytes_lost 1.5e+06``."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in counts.items())


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (the status file's writer, if on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (ggc_user)
        return True
    return True


def age_s(ts_ns: int | float | None, now_ns: int | None = None) -> float | None:
    """Seconds since ``ts_ns`` (None when the event never happened: 0 or missing)."""
    if not ts_ns:
        return None
    return ((now_ns or time.time_ns()) - ts_ns) / 1e9


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 0:
        return f"in {fmt_age(-seconds)}"
    if seconds < 90:
        return f"{seconds:.1f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def fmt_duration(seconds: float) -> str:
    return fmt_age(seconds).removesuffix(" ago")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_RELATIVE = re.compile(r"^(?:now)?-(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A time argument in ns since the epoch: ISO 8601 (UTC unless it says otherwise), epoch seconds, ``now`` or
    relative ``now-10m``, ``now-2h``, ``now-1d`` (``-2h`` too, written ``--from=-2h`` for argparse)."""
    now_ns = now_ns or time.time_ns()
    text = text.strip()
    if text == "now":
        return now_ns
    rel = _RELATIVE.match(text)
    if rel:
        return now_ns - int(float(rel.group(1)) * _UNITS[rel.group(2)] * 1e9)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"time {text!r} is not understood",
                          fix="use ISO 8601 (2026-11-22T05:00:00Z), epoch seconds, now, or now-10m / now-2h / now-1d",
                          ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e9)


# Control characters (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width marks), line and
# paragraph separators, and lone surrogates from undecodable bytes: a terminal acts on them instead of showing them.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def safe(value: object) -> str:
    """``value`` as text for a terminal: every control or format character escaped (``\\x1b``, ``\\u202e``).

    Tag names, values, node and item names, server messages and errors come from devices and the network; printed
    raw, an ESC sequence rewrites the screen or the window title, a CR or bidi override hides what is shown. Every
    human-readable output of gatewayctl passes what it prints through here (``--json`` output is escaped by JSON).
    """
    text = str(value)
    if text.isprintable():  # the fast path: nothing to escape (isprintable is False for any control character)
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def print_json(data: Any) -> None:
    print(json.dumps(data, default=str))


def table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    """A plain text table, every cell made :func:`safe`; ``right`` are the indexes of right-aligned columns."""
    right = right or set()
    rows = [[safe(c) for c in row] for row in rows]
    header = [safe(c) for c in header]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                     strict=False))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
