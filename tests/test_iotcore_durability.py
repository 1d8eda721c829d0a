"""IoT Core through IPC loses nothing when the nucleus restarts while offline (issue 14 item 2).

The IPC stand-in answers PublishToIoTCore the way the nucleus does (``MqttProxyIPCAgent``): once the message is in
the spooler, 2.5 MB in memory by default, which a nucleus restart empties. The records still have to reach IoT
Core: the publisher keeps what may still sit in the spooler uncommitted and sends it again after the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from devkit.ipc_server import IpcServer
from devkit.spooler import SPOOL_FULL, NucleusSpool
from gateway.destinations.base import Route
from gateway.destinations.iotcore import IotCoreConfig, IotCoreDestination
from gateway.publisher import Publisher
from gateway.streams import PositionStore
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import PUBLISHER, fill_values, make_publisher

ROUTE = Route(streams=["values"])
NUCLEUS = "aws.greengrass.Nucleus"


def _ids(server: IpcServer) -> set[str]:
    return {r["id"] for m in server.published for r in json.loads(m.payload)["records"]}


def _spooled_ids(spool: NucleusSpool) -> set[str]:
    return {r["id"] for m in spool._queue for r in json.loads(m.payload)["records"]}


async def _until(what: str, done: Any, task: asyncio.Task[None] | None = None, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        if task is not None:
            assert not task.done(), task.exception()
        await asyncio.sleep(0.05)


def _destination(**kw: Any) -> IotCoreConfig:
    return IotCoreConfig(name="iot", route=ROUTE, topic="factoryedge/{thing}/telemetry/{source}",
                              max_message_bytes=4096, retry_min_s=0.05, retry_max_s=0.2, **kw)


async def _started(pub: Publisher) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(pub.run(stop))


def test_memory_spool_restart_while_offline_loses_no_record(tmp_path: Path, ipc_env: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 400)  # ~100 KB of messages: all of it fits the 2.5 MB spool

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False)  # the site link is down: nothing drains
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        await server.start()
        try:
            cfg = _destination()
            pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
            stop, task = await _started(pub)
            await _until("every record handed to the spooler", lambda: len(_spooled_ids(spool)) == 400, task)
            # A nucleus restart stops every component, then the nucleus starts again with an empty memory spool.
            stop.set()
            await task
            server.restart_nucleus()
            assert spool.queued == 0
            spool.set_online(True)
            pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
            stop, task = await _started(pub)
            try:
                await _until("every record at IoT Core after the restart",
                             lambda: _ids(server) >= {r.id for r in records}, task, timeout=20)
            finally:
                stop.set()
                await task
        finally:
            await server.stop()

    asyncio.run(body())


def test_restart_under_a_running_publisher_resends_what_the_spool_lost(tmp_path: Path, ipc_env: Path) -> None:
    """The nucleus restarts but the publisher process survives it (its IPC connection dropped)."""
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 300)

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False)
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        await server.start()
        cfg = _destination()
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        stop, task = await _started(pub)
        try:
            await _until("every record handed to the spooler", lambda: len(_spooled_ids(spool)) == 300, task)
            server.restart_nucleus()
            spool.set_online(True)
            _fill_more(store, 10)  # the next publish finds the connection gone, reconnects: the spool was lost
            await _until("every record at IoT Core", lambda: _ids(server) >= {r.id for r in records}, task)
        finally:
            stop.set()
            await task
            await server.stop()

    asyncio.run(body())


def test_a_restart_the_connection_survives_by_itself_still_resends(
    tmp_path: Path, ipc_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GreengrassIpc connects again on its own when the nucleus drops it: no publish fails, nothing new is written,
    yet the memory spool is gone; the destination must learn of the reconnection and read again (a race before)."""
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 300)

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False)
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        await server.start()
        cfg = _destination()
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        stop, task = await _started(pub)
        try:
            await _until("every record handed to the spooler", lambda: len(_spooled_ids(spool)) == 300, task)
            with caplog.at_level(logging.INFO, logger="gateway.ipc"):
                server.restart_nucleus()
                await _until("the IPC connection made again by itself",
                             lambda: "connection to the nucleus made again" in caplog.text, task)
            spool.set_online(True)
            await _until("every record at IoT Core", lambda: _ids(server) >= {r.id for r in records}, task)
        finally:
            stop.set()
            await task
            await server.stop()

    asyncio.run(body())


def _fill_more(store: EmbeddedStore, n: int) -> None:
    from gateway.record import make_record
    from gateway.streams import RecordWriter

    RecordWriter(store, "values").write([make_record("plc", "line/more", float(i), seq=10_000 + i) for i in range(n)])


def test_a_full_spool_holds_the_publisher_without_loss(tmp_path: Path, ipc_env: Path) -> None:
    """Offline long enough to fill the spool: "Message spool is full" is retried, nothing is skipped."""
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 600)

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False, max_bytes=40_000)
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        await server.start()
        cfg = _destination(spool_bytes=40_000)
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        stop, task = await _started(pub)
        try:
            await _until("the spool full", lambda: SPOOL_FULL in pub.counters["iot"].last_error, task)
            assert spool.size_bytes <= 40_000
            server.restart_nucleus()
            spool.set_online(True)
            await _until("every record at IoT Core", lambda: _ids(server) >= {r.id for r in records}, task)
        finally:
            stop.set()
            await task
            await server.stop()

    asyncio.run(body())


def test_disk_spooler_commits_on_acceptance_and_survives_restart(tmp_path: Path, ipc_env: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 300)

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False, storage="Disk", path=tmp_path / "spool.jsonl")
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        server.set_configuration(NUCLEUS, {"mqtt": {"spooler": {"storageType": "Disk"}}})
        await server.start()
        cfg = _destination(spooler="disk")
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        stop, task = await _started(pub)
        try:
            end = store.describe("values").next_seq
            await _until("positions committed on the spooler's answer",
                         lambda: PositionStore(tmp_path / "positions").get("iot", "values") == end, task)
        finally:
            stop.set()
            await task
        server.restart_nucleus()
        spool.set_online(True)
        try:
            await _until("every record at IoT Core from the disk spool",
                         lambda: _ids(server) >= {r.id for r in records})
        finally:
            await server.stop()

    asyncio.run(body())


@pytest.mark.parametrize("nucleus", [{"mqtt": {"spooler": {"storageType": "Memory"}}}, None])
def test_disk_asked_but_the_nucleus_spools_in_memory_keeps_the_window(
        tmp_path: Path, ipc_env: Path, nucleus: dict[str, Any] | None,
        caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 200)

    async def body() -> None:
        spool = NucleusSpool(lambda *a: None, online=False)
        server = IpcServer(ipc_env, {"token-publisher": PUBLISHER}, spool=spool)
        if nucleus is not None:
            server.set_configuration(NUCLEUS, nucleus)
        await server.start()
        cfg = _destination(spooler="disk")
        pub = make_publisher(store, tmp_path, {"iot": (cfg, IotCoreDestination(cfg))})
        stop, task = await _started(pub)
        try:
            await _until("every record handed to the spooler", lambda: len(_spooled_ids(spool)) == 200, task)
        finally:
            stop.set()
            await task
            await server.stop()
        assert not PositionStore(tmp_path / "positions").get("iot", "values")  # nothing committed yet
        assert "spooler" in caplog.text and "memory" in caplog.text.lower()

    asyncio.run(body())
