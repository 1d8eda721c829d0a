"""asyncio utilities every layer shares: retry backoff, a stoppable wait, and running blocking calls off the loop.

They live here, below sources, streams, destinations and components alike, so that no module imports another
layer's module just for one of them.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


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
