"""The OPC UA collector keeps data flowing through server restarts, network cuts, silent subscriptions and
configuration changes, without a process restart (node-opcua peer, our fault proxy)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from asyncua import ua

from devkit.faultproxy import FaultProxy
from gateway.record import Kind, Quality
from tests.support.opcua_peer import conn, records, running, start_node_opcua, until


def test_server_restart_renumbers_namespaces_and_data_resumes(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=5, rate=10, namespaces_before=0)
    c = conn(server, nodes=["s=Reactor/Pressure"], browse=["Objects/Tank/*"])

    async def scenario() -> None:
        async with running(tmp_path, [c]) as (col, task):
            counters = col.connections["peer"].counters
            await until(col, task, lambda _: counters.values_written >= 20)
            old_ns = server.ns
            await asyncio.to_thread(server.restart, namespaces_before=3)
            assert server.ns == old_ns + 3  # the server renumbered our namespace
            await until(col, task, lambda _: counters.connect_retries >= 1 and counters.connected)
            mark = counters.values_written
            await until(col, task, lambda _: counters.values_written >= mark + 20)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    recs = records(tmp_path)
    last: dict[str, Quality] = {}
    for r in recs:
        if r.kind == Kind.VALUE:
            last[r.tag] = r.quality
    assert last == {"Reactor/Pressure": Quality.GOOD, "Tank/Level": Quality.GOOD, "Tank/Flow": Quality.GOOD}
    # this server keeps no history: what the restart missed is a gap record, not a silent hole (issue 16, item 9)
    [gap] = [r for r in recs if r.tag == "collector/peer/gap"]
    assert gap.kind == Kind.METRIC and gap.status == ua.StatusCodes.BadHistoryOperationUnsupported
    # the restarted server counts from 0 again: one drop, then rising values from the new session
    v = [r.value for r in recs if r.tag == "Reactor/Pressure" and isinstance(r.value, float)]
    drops = [i for i in range(1, len(v)) if v[i] < v[i - 1]]
    assert len(drops) == 1 and len(v) - drops[0] >= 5, v


def test_network_cut_blackhole_then_reset_resumes_with_counted_reconnect(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=5, rate=10)
    proxy = FaultProxy(server.port).start()
    c = conn(server, endpoint=f"opc.tcp://127.0.0.1:{proxy.port}", keepalive_s=1, timeout_s=2)

    async def scenario() -> None:
        async with running(tmp_path, [c]) as (col, task):
            counters = col.connections["peer"].counters
            await until(col, task, lambda _: counters.values_written >= 10)
            proxy.blackhole()
            await until(col, task, lambda _: not counters.connected)  # the keepalive noticed the silent link
            errors = counters.read_errors
            proxy.reset()
            await until(col, task, lambda _: counters.read_errors > errors)  # a reconnect attempt got RST
            proxy.pass_through()
            await until(col, task, lambda _: counters.connected)
            mark = counters.values_written
            await until(col, task, lambda _: counters.values_written >= mark + 10)
            assert counters.connect_retries >= 2

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
        server.stop()
    assert proxy.connections_accepted >= 2
    recs = records(tmp_path)
    assert recs[-1].quality == Quality.GOOD


def test_silent_subscription_is_rebuilt_by_the_watchdog(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=5, rate=10)
    c = conn(server, watchdog_s=1)

    async def scenario() -> None:
        async with running(tmp_path, [c]) as (col, task):
            counters = col.connections["peer"].counters
            await until(col, task, lambda _: counters.values_written >= 10)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGUSR1)  # the server stops notifying; the session stays healthy
            await until(col, task, lambda _: "MUTED 2 " in server.proc.output() if server.proc else False)
            await until(col, task, lambda _: counters.extra.get("subscription_rebuilds", 0) >= 1)
            mark = counters.values_written
            await until(col, task, lambda _: counters.values_written >= mark + 10)
            assert counters.connect_retries == 0  # rebuilt on the same session

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_config_change_of_one_connection_restarts_only_it(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=5, rate=10)
    a = conn(server, name="a", nodes=["s=Reactor/Pressure"])
    b = conn(server, name="b", nodes=["s=Tank/Level"])

    async def scenario() -> None:
        async with running(tmp_path, [a, b]) as (col, task):
            await until(col, task, lambda _: all(col.connections[n].counters.values_written >= 5 for n in "ab"))
            task_a, task_b = col.connections["a"].task, col.connections["b"].task
            counters_a = col.connections["a"].counters
            await col.apply([a, b.model_copy(update={"nodes": ["s=Tank/Flow"]})])
            assert col.connections["a"].task is task_a and not task_a.done()  # type: ignore[union-attr]
            assert col.connections["b"].task is not task_b and task_b is not None and task_b.done()
            mark = counters_a.values_written
            await until(col, task, lambda _: col.connections["b"].counters.values_written >= 5
                        and counters_a.values_written >= mark + 5)
            assert counters_a.connect_retries == 0

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    tags = {r.tag for r in records(tmp_path)}
    assert tags == {"Reactor/Pressure", "Tank/Level", "Tank/Flow"}
