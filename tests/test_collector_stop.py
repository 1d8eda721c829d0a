"""A stop or a reconfiguration ends every connection, even one whose source lost the cancel.

Python 3.11's ``asyncio.wait_for`` returns (or raises the inner call's error) instead of raising ``CancelledError``
when the awaited call finishes just as the cancel arrives (CPython gh-86296, fixed in 3.12 by the rewrite over
``asyncio.timeout``). asyncua connects and pymodbus reads under ``wait_for``, so a connection retrying a dead
server at the moment of a stop could swallow it and retry forever: the collector's stop then never returned (CI,
test_unreachable_server_does_not_stall_another_connection, 300 s timeout). ``Task.cancelling()`` still counts
the request, and the collector must honour it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import aio
from gateway.collector import Collector
from gateway.errors import SourceError
from gateway.sources.common import ConnectionBase, Emitter
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore


class _LosesTheCancel:
    """Every attempt fails to connect; the cancel that arrives during an attempt is swallowed, as by the race."""

    attempts = 0

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        type(self).attempts += 1
        try:
            await asyncio.Event().wait()  # the connect attempt in flight
        except asyncio.CancelledError:
            pass  # wait_for's race: the refused connect is reported instead of the cancel
        raise SourceError("127.0.0.1:1: cannot connect (ConnectionRefusedError)", retryable=True)


async def _attempting(collector: Collector, name: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while _LosesTheCancel.attempts == 0 or name not in collector.connections:
        assert asyncio.get_running_loop().time() < deadline, "the connection never started"
        await asyncio.sleep(0.01)  # polling a counter with a deadline


def test_stop_ends_a_connection_whose_source_swallowed_the_cancel(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="s"), _LosesTheCancel)

    async def scenario() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([ConnectionBase(name="dead", reconnect_min_s=0.01,
                                                                 reconnect_max_s=0.02)], stop))
        await _attempting(collector, "dead")
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=20)
        if not done:
            task.cancel()
        return bool(done)

    try:
        assert asyncio.run(scenario()), "the collector's stop hung on a connection that lost its cancel"
    finally:
        store.close()


def test_reconfiguration_replaces_a_connection_whose_source_swallowed_the_cancel(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="s"), _LosesTheCancel)

    async def scenario() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([ConnectionBase(name="dead", reconnect_min_s=0.01,
                                                                 reconnect_max_s=0.02)], stop))
        await _attempting(collector, "dead")
        applied = asyncio.create_task(collector.apply([]))  # the deployment removed the connection
        done, _ = await asyncio.wait({applied}, timeout=20)
        stop.set()
        if not done:
            applied.cancel()
            task.cancel()
            return False
        await task
        return "dead" not in collector.connections

    try:
        assert asyncio.run(scenario()), "the removal hung on a connection that lost its cancel"
    finally:
        store.close()


class _PollsOn:
    """Connected and polling; the first cancel is lost inside a read and the loop goes on (a source without its own
    check, e.g. a plugin): only a second cancel ends it."""

    cancels = 0

    def __init__(self, cfg: ConnectionBase) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        while True:
            try:
                await asyncio.Event().wait()  # a read in flight
            except asyncio.CancelledError:
                type(self).cancels += 1
                if type(self).cancels > 1:
                    raise


def test_stop_cancels_again_a_source_that_lost_the_cancel_in_its_own_loop(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "RECANCEL_S", 0.2)  # the wait before cancelling again, made short
    store = EmbeddedStore(tmp_path / "store")
    collector = Collector("test", store, StreamSpec(name="s"), _PollsOn)

    async def scenario() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([ConnectionBase(name="plc")], stop))
        deadline = asyncio.get_running_loop().time() + 20
        while "plc" not in collector.connections or not collector.connections["plc"].counters.connected:
            assert asyncio.get_running_loop().time() < deadline, "the connection never came up"
            await asyncio.sleep(0.01)  # polling a flag with a deadline
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            task.cancel()
        return bool(done)

    try:
        assert asyncio.run(scenario()), "the stop hung on a source that lost the first cancel"
        assert _PollsOn.cancels == 2
    finally:
        store.close()
