"""gateway.aio: the backoff, stoppable wait and offload every layer shares."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from gateway.aio import Backoff, Offload, wait


def test_backoff_doubles_within_jitter_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_wait_says_whether_it_was_stopped() -> None:
    async def scenario() -> tuple[bool, bool, bool, float]:
        stop = asyncio.Event()
        timed_out = await wait(stop, 0.01)
        nothing = await wait(stop, -1)  # a negative remaining budget (a rate limit already overdue) returns at once
        asyncio.get_running_loop().call_later(0.01, stop.set)
        t0 = time.monotonic()
        stopped = await wait(stop, 30)
        return timed_out, nothing, stopped, time.monotonic() - t0

    timed_out, nothing, stopped, took = asyncio.run(scenario())
    assert (timed_out, nothing, stopped) == (False, False, True)
    assert took < 10


def test_offload_runs_calls_in_order_on_its_own_thread() -> None:
    async def scenario() -> list[tuple[int, str]]:
        offload = Offload("t-offload")
        seen: list[tuple[int, str]] = []

        def note(i: int) -> None:
            seen.append((i, threading.current_thread().name))

        try:
            await asyncio.gather(*(offload(note, i) for i in range(5)))
        finally:
            offload.close()
        return seen

    seen = asyncio.run(scenario())
    assert [i for i, _ in seen] == list(range(5))
    assert all(name.startswith("t-offload") for _, name in seen)
