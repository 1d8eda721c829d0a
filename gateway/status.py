"""A component's status file, ``<store.path>/status/<component>.json``, which ``gatewayctl status`` reads.

Every status file starts with :meth:`StatusFile.header`: the component, the configuration keys of
:func:`status_fields` (the revision the runtime applied, its state, the last error, when it was applied), the
process and the time. The runtime (:mod:`gateway.runtime`) keeps those configuration keys in :data:`applied` and
merges them into the file itself when they change; the component's own writer rewrites the whole file every
status interval.

Logs under ``gateway.runtime``: this is the runtime's status writing, split out for size only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fsutil import atomic_write
from gateway.redact import scrub

log = logging.getLogger("gateway.runtime")


@dataclass
class Applied:
    """The configuration the runtime applied last, and how it fares."""

    revision: str = ""
    state: str = "STARTING"
    error: str = ""
    applied_ns: int = 0


applied = Applied()  # one component per process


def status_fields() -> dict[str, Any]:
    """The configuration keys every status file carries: revision applied, state, last error, when applied."""
    return {
        "config_revision": applied.revision,
        "config_state": applied.state,
        "config_error": applied.error,
        "config_applied_ns": applied.applied_ns,
    }


class StatusFile:
    """The status file a component rewrites for gatewayctl: the common keys, live rates, an atomic replace."""

    def __init__(self, component: str, folder: Path | None, interval_s: float | None = None) -> None:
        self.component = component
        self.folder = folder  # None: no status file (tests that only look at counters)
        self.interval_s = interval_s  # how often it is rewritten: gatewayctl calls it STALE after three of them
        self.started_ns = time.time_ns()
        self._rates: dict[str, tuple[int, float]] = {}
        self._failing: set[int | None] = set()  # errnos already logged since the last successful write

    def header(self) -> dict[str, Any]:
        """What every status file starts with: who, which configuration, which process, since and as of when."""
        head = {"component": self.component, **status_fields(), "pid": os.getpid(), "started_ns": self.started_ns,
                "updated_ns": time.time_ns()}
        if self.interval_s is not None:
            head["status_interval_s"] = self.interval_s
        return head

    def rate(self, name: str, count: int) -> float:
        """Per-second rate of a counter since the previous status (what `gatewayctl status` shows as live rate)."""
        now = time.monotonic()
        prev = self._rates.get(name)
        self._rates[name] = (count, now)
        return round((count - prev[0]) / (now - prev[1]), 2) if prev and now > prev[1] else 0.0

    def write(self, status: dict[str, Any]) -> None:
        """Replace the status file. Never raises OSError: a full or read-only disk must not stop the loop that
        calls this (the component keeps working; gatewayctl shows the status as stale until it is written again).
        Logged once per errno until a write succeeds."""
        if self.folder is None:
            return
        path = self.folder / f"{self.component}.json"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(scrub(status)).encode(), sync=False)
        except OSError as exc:
            if exc.errno not in self._failing:
                self._failing.add(exc.errno)
                log.warning("%s: cannot write its status file %s (%s); it keeps running and retries every status "
                            "interval (gatewayctl shows it stale meanwhile). Fix: free space or make the folder "
                            "writable", self.component, path, exc.strerror or exc)
            return
        if self._failing:
            self._failing.clear()
            log.info("%s: status file %s written again", self.component, path)
