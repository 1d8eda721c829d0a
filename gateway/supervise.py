"""Supervised tasks: a task that fails is logged once, shown in the status and restarted with backoff.

The publisher and the anomaly detector run every loop they start through :class:`Supervisor`, so one failing part
(a corrupt position file, a destination that cannot start, a bug) neither dies silently nor takes the others down.
An exception is logged once per distinct message (with its traceback when it is not one of ours: a bug), kept in
the task's :class:`TaskHealth` (the status file's ``tasks`` and ``last_error``, shown by ``gatewayctl status``),
and the task is started again after a backoff that doubles up to ``max_s``. A task that then runs ``healthy_s``
without failing counts as recovered: its ``last_error`` is cleared and its backoff starts again from ``first_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.aio import Backoff, cancel_and_wait, wait
from gateway.errors import GatewayError

log = logging.getLogger(__name__)


@dataclass
class TaskHealth:
    """What the status file shows of one supervised task."""

    restarts: int = 0
    last_error: str = ""
    last_error_ns: int = 0


def describe(exc: BaseException) -> str:
    """One line for the log and the status: our errors carry their fix; anything else is named by its type."""
    if isinstance(exc, GatewayError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


class Supervisor:
    """Starts named tasks and restarts each one that raises, until ``stop`` is set."""

    def __init__(self, owner: str, stop: asyncio.Event, *, first_s: float = 1.0, max_s: float = 60.0,
                 healthy_s: float = 60.0) -> None:
        self.owner = owner
        self.stop = stop
        self.first_s, self.max_s, self.healthy_s = first_s, max_s, healthy_s
        self.tasks: dict[str, TaskHealth] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        on_error: Callable[[str], None] | None = None,
        first_s: float | None = None,
        max_s: float | None = None,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name``; ``on_error`` also gets each failure's text (e.g. a counter's
        ``last_error``)."""
        health = self.tasks.setdefault(name, TaskHealth())
        backoff = Backoff(first_s or self.first_s, max_s or self.max_s)
        return asyncio.create_task(self._run(name, factory, health, backoff, on_error), name=f"{self.owner}:{name}")

    async def _run(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        health: TaskHealth,
        backoff: Backoff,
        on_error: Callable[[str], None] | None,
    ) -> None:
        while not self.stop.is_set():
            task = asyncio.ensure_future(factory())
            try:
                done, _ = await asyncio.wait({task}, timeout=self.healthy_s)
                if not done:  # ran long enough to count as recovered from any earlier failure
                    backoff.reset()
                    health.last_error = ""
                await task
                return
            except asyncio.CancelledError:
                await cancel_and_wait(task)
                raise
            except Exception as exc:  # noqa: BLE001 - the point of a supervisor: log, show, restart
                self._failed(name, exc, health, on_error)
            await wait(self.stop, backoff.next_delay())

    def _failed(self, name: str, exc: Exception, health: TaskHealth, on_error: Callable[[str], None] | None) -> None:
        text = describe(exc)
        if text != health.last_error:  # one line per distinct failure, not one per restart
            bug = not isinstance(exc, GatewayError | OSError)
            log.error("%s: %s failed%s: %s (restarting with backoff; logged again only if the error changes)",
                      self.owner, name, " (a bug: please report it)" if bug else "", text,
                      exc_info=exc if bug else None)
        health.restarts += 1
        health.last_error, health.last_error_ns = text, time.time_ns()
        if on_error is not None:
            on_error(text)

    def status(self) -> dict[str, Any]:
        """``tasks`` (restarts and last error per task) and ``last_error`` (the newest still-current one)."""
        current = [h for h in self.tasks.values() if h.last_error]
        newest = max(current, key=lambda h: h.last_error_ns, default=None)
        return {"tasks": {n: asdict(h) for n, h in self.tasks.items()},
                "last_error": newest.last_error if newest else ""}
