"""asyncio utilities every layer shares: retry backoff, a stoppable wait, running blocking calls off the loop, and
waiting for a blocking shutdown at most until a deadline.

They live here, below sources, streams, destinations and components alike, so that no module imports another
layer's module just for one of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter; never gives up (a collector that stops for good is a bug)."""

    def __init__(self, first_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.first_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


def cancel_requested() -> bool:
    """True when the current task was cancelled but the cancellation got lost on the way.

    Python 3.11's ``asyncio.wait_for`` returns the result (or raises the inner call's error) instead of raising
    ``CancelledError`` when the cancel arrives just as the awaited call finishes (CPython gh-86296, fixed in 3.12).
    asyncua connects and pymodbus awaits every answer under it, so a loop that retries or scans must ask this
    before going round again, or a stop or a reconfiguration hangs. ``Task.cancelling()`` (3.11+) still counts the
    request; on 3.10 there is nothing to ask and this is False.
    """
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())


# longer than a task's own clean ending (an OPC UA session waits 2 s for CloseSession), short enough that a stop
# whose cancel was lost still ends in seconds
RECANCEL_S = 5.0


async def cancel_and_wait(*tasks: asyncio.Future[Any], recancel_s: float | None = None) -> None:
    """Cancel ``tasks`` and wait until every one has ended (their results and errors are dropped).

    A cancel can be lost inside a task's own loop (:func:`cancel_requested`; a plugin's code may not ask), so a task
    still running ``recancel_s`` (default ``RECANCEL_S``) later is cancelled again: a stop must end. The wait leaves
    a task that cleans up on cancellation the time to do it.
    """
    running = {t for t in tasks if not t.done()}
    while running:
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=RECANCEL_S if recancel_s is None else recancel_s)
        running = {t for t in running if not t.done()}
    for task in tasks:  # retrieved, so that asyncio does not log "exception was never retrieved"
        if not task.cancelled():
            task.exception()


async def wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds`` unless ``stop`` is set first.

    Args:
        stop: The event that ends the wait early.
        seconds: How long to wait at most; zero or less returns at once.

    Returns:
        True if stopping (``stop`` is set), so that a loop reads ``if await wait(stop, delay): return``.
    """
    if seconds > 0:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
    return stop.is_set()


class Offload:
    """One worker thread for one blocking resource; ``await offload(fn, *args)`` runs ``fn`` there, in call order.

    Each blocking resource (a store writer, a reader that waits for data, a blocking SDK client) gets its own
    worker, so a reader blocked in a long read never delays a collector's append.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


async def finish_within(what: str, timeout_s: float, fn: Callable[[], object]) -> bool:
    """Run the blocking ``fn`` on a thread of its own and wait for it at most ``timeout_s``.

    For a destination's ``close``: shutting down a worker pool or an SDK client waits for the call in flight, which
    waits for a peer that may never answer. Past the deadline ``fn`` is abandoned: its daemon thread finishes on
    its own (SDK calls have their own timeouts), and one WARNING names ``what`` was left.

    Returns:
        True when ``fn`` finished in time; False when it was abandoned.

    Raises:
        Exception: what ``fn`` raised, when it finished in time.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: Exception | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def run() -> None:
        error: Exception | None = None
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=run, name=f"close-{what}", daemon=True).start()
    finished, _ = await asyncio.wait({done}, timeout=max(0.0, timeout_s))
    if finished:
        done.result()
        return True
    log.warning("%s: close did not finish within %.1f s (the peer does not answer): abandoned; records not "
                "acknowledged were not committed and are sent again after a restart", what, timeout_s)
    return False
