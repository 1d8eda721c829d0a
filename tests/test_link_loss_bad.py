"""A cut link makes every tag BAD once, carrying its last value, and GOOD again on recovery, for every protocol
(issue 13 item 9): OPC UA (node-opcua peer), Modbus TCP (libmodbus peer) and OPC DA (the simulator's OpenOPC
gateway), each behind our fault proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from devkit.faultproxy import FaultProxy
from gateway.record import Kind, Quality, Record
from tests.support.modbus import collecting, counters, until
from tests.support.modbus import conn as modbus_conn
from tests.support.modbus import records as modbus_records
from tests.support.opcda import Run, opcda_conn
from tests.support.opcua_peer import conn as opcua_conn
from tests.support.opcua_peer import records as opcua_records
from tests.support.opcua_peer import running, start_node_opcua
from tests.support.opcua_peer import until as opcua_until
from tests.support.simulator import start_opcda_simulator


def assert_one_bad_with_last_value_then_good(records: list[Record], tags: set[str]) -> None:
    """Per tag: GOOD values, exactly one BAD whose value is the last GOOD value, then GOOD values again."""
    by_tag: dict[str, list[Record]] = {}
    for r in records:
        by_tag.setdefault(r.tag, []).append(r)
    assert set(by_tag) >= tags, set(by_tag)
    for tag in tags:
        seq = [(r.quality, r.value) for r in by_tag[tag]]
        bad = [i for i, (q, _) in enumerate(seq) if q == Quality.BAD]
        assert len(bad) == 1, (tag, [(r.quality.name, r.value, r.seq) for r in by_tag[tag]][-12:])
        i = bad[0]
        assert i > 0 and seq[i - 1][0] == Quality.GOOD, (tag, seq[: i + 1][-5:])
        assert seq[i][1] is not None and seq[i][1] == seq[i - 1][1], (tag, seq[i - 1], seq[i])
        assert any(q == Quality.GOOD for q, _ in seq[i + 1 :]), (tag, seq[i:])


def test_opcua_cut_makes_every_tag_bad_once_with_its_last_value_and_good_on_recovery(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=5, rate=10)
    proxy = FaultProxy(server.port).start()
    c = opcua_conn(server, endpoint=f"opc.tcp://127.0.0.1:{proxy.port}", keepalive_s=1, timeout_s=2)

    async def scenario() -> None:
        async with running(tmp_path, [c]) as (col, task):
            k = col.connections["peer"].counters
            await opcua_until(col, task, lambda _: k.values_written >= 10)
            proxy.blackhole()  # the silent cut: sockets stay open, nothing passes
            await opcua_until(col, task, lambda _: not k.connected)
            errors = k.read_errors
            proxy.reset()  # reconnect attempts fail meanwhile: no second BAD
            await opcua_until(col, task, lambda _: k.read_errors >= errors + 2)
            proxy.pass_through()
            await opcua_until(col, task, lambda _: k.connected)
            mark = k.values_written
            await opcua_until(col, task, lambda _: k.values_written >= mark + 10)

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
        server.stop()
    recs = opcua_records(tmp_path)
    assert_one_bad_with_last_value_then_good(recs, {"Reactor/Pressure", "Reactor/Temperature"})
    # the gateway lost the link, not the server its values: BadServerNotConnected, apart from the server's Bad codes
    assert all(r.status == 0x800D0000 for r in recs if r.quality == Quality.BAD and r.kind == Kind.VALUE)
    assert all(r.status == 0 for r in recs if r.quality == Quality.GOOD)


def test_modbus_cut_makes_every_tag_bad_once_with_its_last_value(peers: Any, tmp_path: Path) -> None:
    server = peers({1: {"hr": {0: [0, 1, 0, 1]}}}, mutate=True)  # values change on every read
    proxy = FaultProxy(server.port).start()
    c_ = modbus_conn(proxy.port, [{"unit_id": 1, "tags": [{"name": "x", "address": 0, "type": "uint32"},
                                                          {"name": "y", "address": 2, "type": "uint32"}]}],
                     timeout_s=0.3)

    async def go() -> None:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).values_written >= 20, "values before the cut")
            await asyncio.to_thread(proxy.blackhole)
            await until(lambda: counters(c).connect_retries >= 1, "the blackhole to be noticed")
            await asyncio.to_thread(proxy.reset)
            cut = counters(c).connect_retries
            await until(lambda: counters(c).connect_retries >= cut + 2, "reconnects refused by the reset")
            await asyncio.to_thread(proxy.pass_through)
            back = counters(c).values_read
            await until(lambda: counters(c).connected and counters(c).values_read > back + 10, "data after the cut")

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
    assert_one_bad_with_last_value_then_good(modbus_records(tmp_path), {"x", "y"})


def test_opcda_cut_makes_every_tag_bad_once_with_its_last_value(tmp_path: Path) -> None:
    proc, port = start_opcda_simulator(tmp_path)
    proxy = FaultProxy(port).start()
    cut = opcda_conn(proxy.port, name="cut", items=["Reactor.Pressure", "Reactor.Level"],
                     rewrite_proxy_host="always")  # the per-client object through the cut link too

    async def body() -> list[Record]:
        run = Run(tmp_path, [cut])
        await run.written(4, "cut")
        await asyncio.to_thread(proxy.reset)
        await run.until(lambda: not run.counters("cut").connected, "the reset noticed")
        errors = run.counters("cut").read_errors
        await run.until(lambda: run.counters("cut").read_errors >= errors + 2, "reconnects refused")
        await asyncio.to_thread(proxy.pass_through)
        await run.more(4, "cut")
        return await run.finish()

    try:
        records = asyncio.run(body())
    finally:
        proxy.stop()
        proc.stop()
    assert_one_bad_with_last_value_then_good(records, {"Reactor.Pressure", "Reactor.Level"})
