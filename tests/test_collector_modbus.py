"""The Modbus collector against real servers: an independent libmodbus C server and the simulator's Modbus endpoint.

The libmodbus server (tests/peers/modbus_server.c, run by tests/support/modbus_peer.py) is compiled once per
session; each test writes its tables to a file, starts the server by PID on a free port, and reads its request log
(``-v``) to count what the collector asked.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.faultproxy import FaultProxy
from devkit.peers import free_port, port_open, start, wait_for
from gateway.collector import Collector
from gateway.record import Quality, Record
from gateway.sources.modbus import diagnose
from gateway.sources.modbus_config import ModbusConnection
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore
from tests.support.modbus import collecting, conn, counters, records, until
from tests.support.modbus_cases import CASES, load_case, same
from tests.support.modbus_peer import FILE_KEYS, Tables


def last_by_tag(recs: list[Record], source: str | None = None) -> dict[str, Record]:
    return {r.tag: r for r in recs if source is None or r.source == source}


def assert_nothing_dropped(c: Collector, tmp: Path) -> None:
    """Every value read is in the stream, suppressed by the deadband, or still pending (and counted)."""
    stored = records(tmp)
    assert c.values_dropped == 0
    for name, conn_ in c.connections.items():
        k = conn_.counters
        pending = len(conn_.backlog) + len(conn_.emitter.pending)
        assert k.values_read == k.values_written + k.values_suppressed + pending, (name, k)
        assert sum(r.source == name for r in stored) == k.values_written
    assert len({r.id for r in stored}) == len(stored)


# --- every case folder, end to end through the independent server -------------------------------------------------
def test_case_folders_against_libmodbus(peers: Any, tmp_path: Path) -> None:
    folders = sorted(p for p in CASES.iterdir() if p.is_dir())
    tables: Tables = {}
    maps, expected = [], {}
    for unit, folder in enumerate(folders, start=1):  # one server, one unit id per case
        case_conn, registers, want = load_case(folder)
        assert len(case_conn.units) == 1
        tables[unit] = {FILE_KEYS[k]: {int(a): v for a, v in blocks.items()}
                        for k, blocks in next(iter(registers.values())).items()}
        data = case_conn.model_dump()
        data["units"][0]["unit_id"] = unit
        expected[folder.name] = (unit, want)
        maps.append(data)
    server = peers(tables)
    conns = [ModbusConnection(**{**m, "port": server.port, "scan_interval_s": 0.05}) for m in maps]

    async def go() -> None:
        async with collecting(tmp_path, conns) as c:
            await until(lambda: all(counters(c, n).values_read >= 2 * len(expected[n][1]["values"])
                                    for n in expected), "two scans of every case")
    asyncio.run(go())

    stored = records(tmp_path)
    for name, (unit, want) in expected.items():
        got = last_by_tag(stored, name)
        assert set(got) == set(want["values"]), name
        for tag, value in want["values"].items():
            rec = got[tag]
            if isinstance(value, float) and math.isnan(value):
                assert rec.quality == Quality.BAD and rec.value is None, (name, tag)
            else:
                assert rec.quality == Quality.GOOD and same(rec.value, value), (name, tag, rec.value, value)
        if "requests" in want:  # coalescing, counted by the server
            shapes = {r[1:] for r in server.requests() if r[0] == unit}
            assert len(shapes) == want["requests"], (name, sorted(shapes))
            assert all(n <= (2000 if fc in (1, 2) else 125) for fc, _, n in shapes)


# --- the simulator's endpoint: two unit ids, two orders ------------------------------------------------------------
@pytest.fixture
def sim_modbus(tmp_path: Path) -> Any:
    port = free_port()
    proc = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "modbus", "--modbus-port",
                  str(port), "--seed", "7", "--speed", "10", "--status-every", "0"], tmp_path / "simulator.log")
    wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 60, "the simulator's Modbus endpoint")
    assert proc.popen.poll() is None, proc.output()
    yield port
    proc.stop()


def _sim_unit(unit: int, order: str, prefix: str) -> dict[str, Any]:
    return {"unit_id": unit, "order": order, "tags": [
        {"name": f"{prefix}/Reactor/Pressure", "fc": 4, "address": 12, "type": "float32"},
        {"name": f"{prefix}/Reactor/Temperature", "fc": 4, "address": 16, "type": "float32"},
        {"name": f"{prefix}/Seed", "fc": 4, "address": 102, "type": "uint32"},
        {"name": f"{prefix}/Tripped", "fc": 4, "address": 106, "type": "uint16"},
        {"name": f"{prefix}/XMV1", "fc": 3, "address": 0, "type": "float32"},
        {"name": f"{prefix}/IDV01", "fc": 1, "address": 0, "type": "bool"},
        {"name": f"{prefix}/Shutdown", "fc": 2, "address": 0, "type": "bool"}]}


def test_simulator_both_unit_ids_and_orders(sim_modbus: int, tmp_path: Path) -> None:
    c_ = conn(sim_modbus, [_sim_unit(1, "ABCD", "u1"), _sim_unit(2, "CDAB", "u2")])

    async def go() -> list[Any]:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).values_read >= 42, "three scans")
        wrong = c_.model_copy(update={"units": [c_.units[0], c_.units[1].model_copy(update={"order": "ABCD"})]})
        return await diagnose(wrong, 5)
    findings = asyncio.run(go())

    got = last_by_tag(records(tmp_path))
    for u in ("u1", "u2"):
        assert got[f"{u}/Seed"].value == 7
        assert 2600 < got[f"{u}/Reactor/Pressure"].value < 2800  # type: ignore[operator]
        assert 110 < got[f"{u}/Reactor/Temperature"].value < 135  # type: ignore[operator]
        assert got[f"{u}/Tripped"].value == 0 and got[f"{u}/Shutdown"].value is False
        assert got[f"{u}/IDV01"].value is False
        assert all(r.quality == Quality.GOOD for r in got.values())
    order = [f for f in findings if f.check == "modbus unit 2 byte order"]
    assert order and order[0].ok is False and "set order: CDAB" in order[0].fix, findings
    assert [f.ok for f in findings if f.check == "modbus unit 1 byte order"] == [True]


# --- failures that must stay local to their tags -------------------------------------------------------------------
def test_exception_makes_exactly_the_tags_of_its_request_bad(peers: Any, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    tables: Tables = {1: {"hr": {0: list(range(100, 110)), 50: [1, 2, 3, 4], 200: [7]}}}
    server = peers(tables, holes=[(1, "hr", 50, 2)])
    tags = [{"name": "a", "address": 0}, {"name": "b", "address": 2}, {"name": "c", "address": 50},
            {"name": "d", "address": 52}, {"name": "e", "address": 200}]
    c_ = conn(server.port, [{"unit_id": 1, "tags": tags}], max_gap=8, deadband={"heartbeat_s": 0.01})

    async def go() -> Collector:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).read_errors >= 5, "five failed requests")
            good_before = {r.tag for r in records(tmp_path) if r.quality == Quality.GOOD}
            bad_before = {r.tag for r in records(tmp_path) if r.quality == Quality.BAD}
            assert good_before == {"a", "b", "e"} and bad_before == {"c", "d"}
            await asyncio.to_thread(server.reload, tables)  # the device's map is fixed: the tags recover
            await until(lambda: any(r.tag == "c" and r.quality == Quality.GOOD for r in records(tmp_path)),
                        "c to read again")
        return c
    with caplog.at_level("INFO", logger="gateway.sources.modbus"):
        c = asyncio.run(go())
    k = counters(c)
    assert list(k.extra["errors"]) == ["exception 2 (illegal data address)"]
    assert k.extra["errors"]["exception 2 (illegal data address)"] == k.read_errors >= 5
    # besides the start's one plain-channel warning (Modbus TCP is unauthenticated), one for the failed request
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "unauthenticated" not in r.getMessage()]
    assert len(warnings) == 1 and "holding registers 50-52" in warnings[0].getMessage()
    assert sum(r.getMessage().endswith("reads again") for r in caplog.records) == 1
    assert last_by_tag(records(tmp_path))["d"].value == 3
    assert k.connect_retries == 0
    assert_nothing_dropped(c, tmp_path)


def test_unknown_and_silent_unit_ids_go_bad_while_the_good_unit_flows(peers: Any, tmp_path: Path) -> None:
    server = peers({1: {"ir": {0: [42]}}}, silent=[6])
    c_ = conn(server.port, [{"unit_id": u, "tags": [{"name": f"u{u}", "fc": 4, "address": 0}]} for u in (1, 5, 6)],
              timeout_s=0.2)

    async def go() -> Collector:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).extra.get("errors", {}).get("no answer within 0.2 s", 0) >= 3,
                        "three timeouts")
        return c
    c = asyncio.run(go())
    got = last_by_tag(records(tmp_path))
    assert got["u1"].quality == Quality.GOOD and got["u1"].value == 42
    assert got["u5"].quality == Quality.BAD and got["u6"].quality == Quality.BAD
    errors = counters(c).extra["errors"]
    assert set(errors) == {"exception 11 (gateway target device failed to respond)", "no answer within 0.2 s"}
    assert counters(c).connect_retries == 0  # a silent unit is not a dead link
    assert sum(r.tag == "u1" and r.quality == Quality.GOOD for r in records(tmp_path)) >= 1


# --- the link itself: restart, blackhole, reset ---------------------------------------------------------------------
def _flowing(tmp: Path, after_ns: int) -> Callable[[], bool]:
    return lambda: any(r.quality == Quality.GOOD and r.gateway_ts_ns > after_ns for r in records(tmp))


def test_server_restart_mid_run_resumes_without_loss(peers: Any, tmp_path: Path) -> None:
    server = peers({1: {"hr": {0: [0, 1, 0, 1]}}}, mutate=True)  # values change on every read
    c_ = conn(server.port, [{"unit_id": 1, "tags": [{"name": "x", "address": 0, "type": "uint32"},
                                                     {"name": "y", "address": 2, "type": "uint32"}]}])

    async def go() -> Collector:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).values_written >= 20, "values before the restart")
            await asyncio.to_thread(server.stop)
            await until(lambda: not counters(c).connected and counters(c).connect_retries >= 1, "the disconnect")
            await until(lambda: last_by_tag(records(tmp_path)).get("x", None) is not None
                        and last_by_tag(records(tmp_path))["x"].quality == Quality.BAD, "x to go BAD")
            down = counters(c).values_read
            await asyncio.to_thread(server.start)
            restarted = asyncio.get_running_loop().time()
            await until(lambda: counters(c).connected and counters(c).values_read > down + 10, "values after restart")
            assert asyncio.get_running_loop().time() - restarted < 10
        return c
    c = asyncio.run(go())
    assert_nothing_dropped(c, tmp_path)
    xs = [r for r in records(tmp_path) if r.tag == "x"]
    assert xs[-1].quality == Quality.GOOD
    assert [r.quality for r in xs].count(Quality.BAD) >= 1


def test_network_cut_blackhole_then_reset_resumes_without_loss(peers: Any, tmp_path: Path) -> None:
    server = peers({1: {"hr": {0: [0, 1, 0, 1]}}}, mutate=True)
    proxy = FaultProxy(server.port).start()
    c_ = conn(proxy.port, [{"unit_id": 1, "tags": [{"name": "x", "address": 0, "type": "uint32"},
                                                    {"name": "y", "address": 2, "type": "uint32"}]}], timeout_s=0.3)

    async def go() -> Collector:
        async with collecting(tmp_path, [c_]) as c:
            await until(lambda: counters(c).values_written >= 20, "values before the cut")
            await asyncio.to_thread(proxy.blackhole)
            await until(lambda: counters(c).connect_retries >= 1, "the blackhole to be noticed")
            await until(lambda: last_by_tag(records(tmp_path))["x"].quality == Quality.BAD, "x to go BAD")
            await asyncio.to_thread(proxy.reset)
            cut = counters(c).connect_retries
            await until(lambda: counters(c).connect_retries >= cut + 2, "reconnects refused by the reset")
            await asyncio.to_thread(proxy.pass_through)
            back = counters(c).values_read
            await until(lambda: counters(c).connected and counters(c).values_read > back + 10, "data after the cut")
        return c
    try:
        c = asyncio.run(go())
    finally:
        proxy.stop()
    assert_nothing_dropped(c, tmp_path)
    assert "no answer" in " ".join(counters(c).extra["errors"]) or "presumed dead" in counters(c).last_error
    assert last_by_tag(records(tmp_path))["x"].quality == Quality.GOOD
    assert proxy.connections_accepted >= 2


# --- the real component: configuration change without a restart ----------------------------------------------------
def test_component_applies_a_config_change_without_restarting(peers: Any, tmp_path: Path) -> None:
    server = peers({1: {"hr": {0: [1, 2, 3]}}}, mutate=True)
    store = tmp_path / "store"

    def write_config(tags: list[str]) -> None:
        units = [{"unit_id": 1, "tags": [{"name": t, "address": i} for i, t in enumerate(tags)]}]
        base = {"host": "127.0.0.1", "port": server.port, "scan_interval_s": 0.05, "units": units}
        other = {**base, "name": "steady", "units": [{"unit_id": 1, "tags": [{"name": "s", "address": 2}]}]}
        cfg = {"store": {"kind": "embedded", "path": str(store)}, "status_interval_s": 0.1,
               "connections": [{**base, "name": "changing"}, other]}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    def status() -> dict[str, Any]:
        path = store / "status" / "factoryedge.ModbusCollector.json"
        return dict(json.loads(path.read_text()).get("connections", {})) if path.exists() else {}

    def tags_in_stream() -> set[str]:
        reader = RecordReader(EmbeddedStore(store), "factoryedge-modbus", "t", PositionStore(tmp_path / "pos"))
        return {r.tag for r in reader.poll(max_messages=1_000_000, timeout_s=0).records}

    write_config(["a"])
    proc = start([sys.executable, "-m", "components.modbus_collector.main", "--config", str(tmp_path / "cfg.yaml")],
                 tmp_path / "component.log")
    try:
        wait_for(lambda: status().get("steady", {}).get("values_read", 0) >= 20, 30, "the component's first values")
        assert tags_in_stream() == {"a", "s"}
        steady_before = status()["steady"]["values_read"]
        write_config(["a", "b"])
        proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "b" in tags_in_stream() or proc.popen.poll() is not None, 30, "the new tag's values")
        assert proc.popen.poll() is None, proc.output()
        assert status()["steady"]["values_read"] >= steady_before  # the unchanged connection was not restarted
        assert "connection changing: stopped (changed)" in proc.output()
        assert "connection steady: stopped" not in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()


# --- diagnostics and the CLI ---------------------------------------------------------------------------------------
def _float_regs(value: float, order: str) -> list[int]:
    from simulator.modbus_server import float_registers

    return float_registers([value], order)


def test_diagnose_names_the_order_and_the_silent_unit(peers: Any) -> None:
    server = peers({1: {"hr": {0: _float_regs(2705.25, "CDAB") + _float_regs(75.5, "CDAB")}}})
    tags = [{"name": "p", "address": 0, "type": "float32"}, {"name": "t", "address": 2, "type": "float32"}]
    cfg = conn(server.port, [{"unit_id": 1, "order": "ABCD", "tags": tags},
                             {"unit_id": 9, "tags": [{"name": "n", "address": 0}]}])
    findings = {f.check: f for f in asyncio.run(diagnose(cfg, 5))}
    assert findings[f"modbus 127.0.0.1:{server.port}"].ok is True
    assert findings["modbus unit 1"].ok is True
    order = findings["modbus unit 1 byte order"]
    assert order.ok is False and "set order: CDAB" in order.fix and "2705.25" in order.detail
    assert findings["modbus unit 9"].ok is False and "exception 11" in findings["modbus unit 9"].detail
    fixed = cfg.model_copy(update={"units": [cfg.units[0].model_copy(update={"order": "CDAB"})]})
    assert [f.ok for f in asyncio.run(diagnose(fixed, 5))] == [True, True, True]
    dead = asyncio.run(diagnose(conn(free_port(), cfg.model_dump()["units"]), 2))
    assert [f.ok for f in dead] == [False]


def test_gatewayctl_modbus_read_shows_every_order(peers: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    server = peers({1: {"hr": {10: _float_regs(2705.25, "CDAB") + _float_regs(-0.5, "CDAB")}}})
    args = ["modbus", "read", "127.0.0.1", "10", "--port", str(server.port), "--type", "float32", "--order", "CDAB"]
    assert main([*args, "--count", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["value"] for v in out["values"]] == [2705.25, -0.5]
    assert out["values"][0]["registers"] == _float_regs(2705.25, "CDAB")
    assert out["values"][0]["plausible"] == ["CDAB"]
    assert set(out["values"][0]["orders"]) == {"ABCD", "CDAB", "BADC", "DCBA"}
    assert main(args) == 0
    human = capsys.readouterr().out
    assert "CDAB*" in human and "2705.25" in human and "1400 4529" in human
    assert main([*args, "--unit", "4"]) == 1
    assert "exception 11" in capsys.readouterr().err
    assert main(["modbus", "read", "127.0.0.1", "0", "--port", str(server.port), "--type", "string"]) == 2
    assert "--length" in capsys.readouterr().err


def _regs64(fmt: str, value: float) -> list[int]:
    import struct

    return list(struct.unpack(">4H", struct.pack(fmt, value)))  # ABCD: the Modbus standard's big endian


def _columns_align(table: str) -> None:
    """Every row of the value table ends each column where its header does (right-aligned cells)."""
    import re

    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("address"))
    rows = [line for line in lines[header + 1 :] if line[:1] == " "]
    ends = [m.end() for m in re.finditer(r"[A-D]{4}\*?", lines[header])]
    assert len(ends) == 4 and rows, table
    for row in rows:
        assert len(row) == ends[-1], f"row {row!r} does not end at its header's last column:\n{table}"
        for end in ends:
            assert row[end - 1] != " ", f"a cell does not end at its column (char {end}):\n{table}"


def test_gatewayctl_modbus_read_aligns_64_bit_values_and_shows_float64_exactly(
    peers: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.main import main

    server = peers({1: {"hr": {0: _regs64(">q", -(2**63)) + _regs64(">q", 12345678901234567),
                               8: _regs64(">Q", 2**64 - 1) + _regs64(">Q", 7),
                               16: _regs64(">d", 0.1 + 0.2) + _regs64(">d", -1.2345678901234567e-300)}}})
    read = ["modbus", "read", "127.0.0.1", "--port", str(server.port), "--count", "2"]
    for address, kind, shown in (("0", "int64", "-9223372036854775808"), ("8", "uint64", "18446744073709551615"),
                                 ("16", "float64", "0.30000000000000004")):
        assert main([*read[:3], address, *read[3:], "--type", kind]) == 0
        table = capsys.readouterr().out
        assert shown in table, table
        _columns_align(table)
    assert main([*read[:3], "16", *read[3:], "--type", "float64", "--json"]) == 0
    assert [v["value"] for v in json.loads(capsys.readouterr().out)["values"]] == [0.1 + 0.2, -1.2345678901234567e-300]
