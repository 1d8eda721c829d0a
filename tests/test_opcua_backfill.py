"""No gap when the server keeps history (issue 16, items 8 and 9).

An asyncua server historizes its counters into SQLite (tests/support/opcua_history_server.py, a process of its own
whose history survives its restart). The OPC UA collector reads it; the link is cut (fault proxy), the server
restarted, or the collector killed with kill -9, while the counters go on. Once it is back, every value the server
historized in the gap is in the stream exactly once per (tag, source timestamp), flagged backfill, in order per
tag; a node the server does not historize gets a gap record instead. In process: :func:`backfill` against an
asyncua server whose history answers in pages with continuation points, or cuts pages without one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, Server
from asyncua import ua as _ua
from asyncua.server.history import HistoryDict

from devkit.faultproxy import FaultProxy
from devkit.peers import ROOT, Proc, free_port, start, wait_for
from gateway.codec import decode_batch
from gateway.record import Flag, Kind, Quality, Record
from gateway.sources import opcua_history
from gateway.sources.common import Counters, Emitter
from gateway.sources.laststored import LastStored
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_history import GapFiller, backfill, dv_ts_ns
from gateway.streams.embedded import EmbeddedStore
from tests.support.opcua_history_server import FIRST_ID, NO_HISTORY_ID
from tests.support.opcua_peer import records, running, until

# asyncua's NewType-based annotations (Int16, DateTime...) reject the plain ints and datetimes its runtime takes
ua: Any = _ua
URI = "urn:factoryedge:history"
TAGS = [f"Counter{i}" for i in range(3)]
COMPONENT = "factoryedge.OpcUaCollector"


class HistoryServer:
    """The history server process; ``restart`` keeps its port and its SQLite history."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.starts = folder, free_port(), 0
        self.proc: Proc | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> HistoryServer:
        self.starts += 1
        cmd = [sys.executable, "-m", "tests.support.opcua_history_server", "--port", str(self.port),
               "--db", str(self.folder / "history.sqlite"), "--tags", str(len(TAGS)), "--period-s", "0.1"]
        self.proc = proc = start(cmd, self.folder / f"server-{self.starts}.log", env={"PYTHONPATH": str(ROOT)})
        wait_for(lambda: "READY" in proc.output() or proc.popen.poll() is not None, 60, "history server READY")
        assert "READY" in proc.output(), proc.output()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = HistoryServer(tmp_path / "server").start()
    yield srv
    srv.stop()


def settings(endpoint: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "hist", "endpoint": endpoint, "namespace_uri": URI,
        "nodes": [f"i={FIRST_ID + i}" for i in range(len(TAGS))] + [f"i={NO_HISTORY_ID}"],
        "tag_map": {**{str(FIRST_ID + i): t for i, t in enumerate(TAGS)}, str(NO_HISTORY_ID): "NoHistory"},
        "publishing_interval_ms": 50, "queue_size": 20, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
        "timeout_s": 2, "keepalive_s": 1, "flush_interval_s": 0.05,
    }
    base.update(kw)
    return base


def value_of(dv: Any) -> Any:
    return dv.Value.Value if dv.Value is not None else None


async def server_history(url: str) -> dict[str, list[tuple[int, Any]]]:
    """Every historized (source ts, value) per tag, oldest first, read straight from the server."""
    out: dict[str, list[tuple[int, Any]]] = {}
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(URI)
        end = datetime.now(timezone.utc) + timedelta(minutes=1)
        for i, tag in enumerate(TAGS):
            node = client.get_node(ua.NodeId(FIRST_ID + i, ns))
            dvs = await node.read_raw_history(datetime.now(timezone.utc) - timedelta(hours=1), end)
            out[tag] = [(ts, value_of(dv)) for dv in dvs if (ts := dv_ts_ns(dv)) is not None]
    return out


async def counted_on(server: HistoryServer, since_ns: int, n: int, timeout_s: float = 30) -> None:
    """Wait until the server historized ``n`` values of a tag after ``since_ns``."""
    deadline = time.monotonic() + timeout_s
    while len([ts for ts, _ in (await server_history(server.url))[TAGS[0]] if ts > since_ns]) < n:
        assert time.monotonic() < deadline, f"the server did not count on\n{server.proc and server.proc.output()}"
        await asyncio.sleep(0.2)


def link_lost(recs: list[Record], cut_ns: int) -> int:
    """When the collector marked the cut link (BAD records): values that were on the wire at the cut still came."""
    return min(r.gateway_ts_ns for r in recs if r.tag == TAGS[0] and r.quality != 0 and r.gateway_ts_ns > cut_ns)


def gap_records(recs: list[Record]) -> list[Record]:
    """Gap records of the connection, but those of an overload (Flag.OVERFLOW), which another test suite covers."""
    return [r for r in recs if r.tag == "collector/hist/gap" and not r.flags & Flag.OVERFLOW]


def check_gap_filled(recs: list[Record], history: dict[str, list[tuple[int, Any]]], after_ns: int) -> int:
    """Every server value of each tag after its last live value stored before ``after_ns`` (the start of the gap)
    and before its first live value after it is in ``recs`` once, flagged backfill, in order; returns how many."""
    values = [r for r in recs if r.kind == Kind.VALUE and r.tag in TAGS]
    dupes = [k for k, n in Counter((r.tag, r.source_ts_ns) for r in values if r.quality == 0).items() if n > 1]
    assert not dupes, f"stored more than once: {dupes[:5]}"
    filled = 0
    for tag in TAGS:
        live = [r for r in values if r.tag == tag and not r.flags & Flag.BACKFILL and r.quality == 0]
        before = max(r.source_ts_ns for r in live if r.gateway_ts_ns < after_ns)
        resumed = min(r.source_ts_ns for r in live if r.gateway_ts_ns > after_ns and r.source_ts_ns > before)
        missed = [(ts, v) for ts, v in history[tag] if before < ts < resumed]
        assert len(missed) >= 5, f"{tag}: the gap should hold values: {missed}"
        got = [(r.source_ts_ns, r.value) for r in values if r.tag == tag and r.flags & Flag.BACKFILL]
        assert got == missed, f"{tag}: backfilled {got[:3]}... ({len(got)}), server had {missed[:3]}... " \
                              f"({len(missed)})"
        filled += len(got)
    return filled


def test_link_cut_is_filled_from_history_and_a_node_without_history_gets_a_gap_record(
        server: HistoryServer, tmp_path: Path) -> None:
    proxy = FaultProxy(server.port).start()
    cfg = OpcUaConnection(**settings(f"opc.tcp://127.0.0.1:{proxy.port}"))

    async def scenario() -> int:
        async with running(tmp_path, [cfg]) as (col, task):
            k = col.connections["hist"].counters
            await until(col, task, lambda _: k.values_written >= 20)
            proxy.blackhole()
            cut = time.time_ns()
            await until(col, task, lambda _: not k.connected)  # the keepalive noticed
            proxy.pass_through()
            await until(col, task, lambda _: k.extra.get("history_values_read", 0) > 0 and k.gaps >= 1)
            mark = k.values_written
            await until(col, task, lambda _: k.values_written >= mark + 10)
            return cut

    try:
        cut = asyncio.run(scenario())
        history = asyncio.run(server_history(server.url))
    finally:
        proxy.stop()
    recs = records(tmp_path)
    cut = link_lost(recs, cut)
    check_gap_filled(recs, history, cut)
    [gap] = gap_records(recs)
    assert gap.kind == Kind.METRIC and gap.status == ua.StatusCodes.BadHistoryOperationUnsupported
    nohist = [r for r in recs if r.tag == "NoHistory" and r.quality == 0]
    last_before = max(r.gateway_ts_ns for r in nohist if r.gateway_ts_ns < cut)
    assert last_before - 1e9 <= gap.source_ts_ns <= last_before, "t1: when the stream last had the tag"
    assert gap.gateway_ts_ns > cut, "t2: the reconnect"
    assert not any(r.flags & Flag.BACKFILL for r in recs if r.tag == "NoHistory")


def test_server_restart_with_its_history_is_filled(server: HistoryServer, tmp_path: Path) -> None:
    proxy = FaultProxy(server.port).start()
    cfg = OpcUaConnection(**settings(f"opc.tcp://127.0.0.1:{proxy.port}",
                                           nodes=[f"i={FIRST_ID + i}" for i in range(len(TAGS))]))

    async def scenario() -> int:
        async with running(tmp_path, [cfg]) as (col, task):
            k = col.connections["hist"].counters
            await until(col, task, lambda _: k.values_written >= 20)
            proxy.refuse()  # the collector cannot come back before the restarted server counted on a while
            cut = time.time_ns()
            await until(col, task, lambda _: not k.connected)
            server.stop()
            server.start()
            ready = time.time_ns()
            await counted_on(server, ready, 10)  # values the collector can only get from the restarted server's history
            proxy.pass_through()
            await until(col, task, lambda _: k.extra.get("history_values_read", 0) > 0)
            mark = k.values_written
            await until(col, task, lambda _: k.values_written >= mark + 10)
            return cut

    try:
        cut = asyncio.run(scenario())
        history = asyncio.run(server_history(server.url))
    finally:
        proxy.stop()
    recs = records(tmp_path)
    check_gap_filled(recs, history, link_lost(recs, cut))
    assert not gap_records(recs), "every node is historized: no gap"


def stored(data: Path) -> list[Record]:
    store = EmbeddedStore(data)
    try:
        if "opcua" not in store.list_streams():
            return []
        out: list[Record] = []
        for msg in store.read("opcua", store.describe("opcua").oldest_seq, max_count=1_000_000):
            out += decode_batch(msg.payload)
        return out
    finally:
        store.close()


def test_kill9_of_the_collector_is_filled_from_history(server: HistoryServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"kind": "embedded", "path": str(data)}, "status_interval_s": 0.2,
                                   "stream": {"name": "opcua"}, "connections": [settings(server.url)]}))
    status = data / "status" / f"{COMPONENT}.json"

    def launch(n: int) -> Proc:
        return start([sys.executable, str(ROOT / "components/opcua_collector/main.py"), "--config", str(cfg)],
                     tmp_path / f"collector{n}.log", env={"PYTHONPATH": str(ROOT)})

    def backfilled() -> int:
        conn = json.loads(status.read_bytes())["connections"].get("hist", {}) if status.exists() else {}
        return int(conn.get("extra", {}).get("history_values_read", 0))

    first = launch(1)
    try:
        wait_for(lambda: len([r for r in stored(data) if r.tag in TAGS]) >= 30, 60, f"values\n{first.output()}")
    finally:
        first.stop(signal.SIGKILL)
    killed = time.time_ns()
    last = max(r.source_ts_ns for r in stored(data) if r.tag == TAGS[0])
    wait_for(lambda: len([ts for ts, _ in asyncio.run(server_history(server.url))[TAGS[0]] if ts > last]) >= 20,
             30, "the server counting on while the collector is dead", interval=0.2)
    second = launch(2)
    try:
        wait_for(lambda: backfilled() > 0, 60, f"values read from history\n{second.output()}")
    finally:
        assert second.stop() == 0, second.output()
    recs = stored(data)
    filled = check_gap_filled(recs, asyncio.run(server_history(server.url)), killed)
    assert filled >= 3 * 15, "about 2 s of 10 values/s of 3 tags"
    gaps = gap_records(recs)
    # the only gap is the tag the server does not historize, from when it was last stored to the restart
    assert [g.status for g in gaps] == [ua.StatusCodes.BadHistoryOperationUnsupported], gaps
    assert gaps[0].source_ts_ns < killed < gaps[0].gateway_ts_ns


# --- in process: backfill() over pages, continuation points and a pace ----------------------------------------------
async def _history_server(per_response: int, values: int,
                          ahead_s: int = 0) -> tuple[Server, dict[str, Any], list[int]]:
    """A server whose nodes T0..T2 have ``values`` historized values one a second, the last ``ahead_s`` s from now
    (values in the future stand for those a server makes while a session starts)."""
    port = free_port()
    srv = Server()
    await srv.init()
    srv.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    srv.iserver.history_manager.set_storage(HistoryDict(max_history_data_response_size=per_response))
    ns = await srv.register_namespace(URI)
    nodes = {f"T{i}": await srv.nodes.objects.add_variable(ua.NodeId(f"T{i}", ns), f"T{i}", 0) for i in range(3)}
    await srv.start()
    t0 = datetime.now(timezone.utc) - timedelta(seconds=values - ahead_s)
    for node in nodes.values():
        await srv.historize_node_data_change(node)
        for i in range(values):  # straight into the storage: exactly these values, one a second
            dv = ua.DataValue(ua.Variant(i, ua.VariantType.Int64), SourceTimestamp=t0 + timedelta(seconds=i))
            await srv.iserver.history_manager.storage.save_node_value(node.nodeid, dv)
    stamps = [int((t0 + timedelta(seconds=i)).timestamp() * 1e9) for i in range(values)]
    return srv, {"url": f"opc.tcp://127.0.0.1:{port}", "ns": ns}, stamps


@pytest.mark.parametrize(("per_response", "per_request"), [(7, 1000), (1000, 5)],
                         ids=["continuation-points", "pages-cut-without-one"])
def test_backfill_reads_every_value_once_in_order(per_response: int, per_request: int) -> None:
    async def scenario() -> tuple[list[tuple[str, int, Any]], int, list[int]]:
        srv, where, stamps = await _history_server(per_response, 40)
        try:
            async with Client(where["url"], timeout=5) as client:
                nodes = {t: client.get_node(ua.NodeId(t, where["ns"])) for t in ("T0", "T1", "T2")}
                got: list[tuple[str, int, Any]] = []
                # T0 from its 10th value, T1 from its 20th, T2 from before its first; T1 until its 30th
                since = {"T0": stamps[9], "T1": stamps[19], "T2": stamps[0] - 1}
                until = {"T0": stamps[-1] + 1, "T1": stamps[30], "T2": stamps[-1] + 1}
                done = await backfill(client, nodes, since, until,
                                      lambda t, dv: got.append((t, dv_ts_ns(dv) or 0, value_of(dv))),
                                      values_per_request=per_request, max_values_per_s=1e9)
                return got, done.values, stamps
        finally:
            await srv.stop()

    got, n, stamps = asyncio.run(scenario())
    expected = {"T0": list(range(10, 40)), "T1": list(range(20, 30)), "T2": list(range(40))}
    for tag, values in expected.items():
        assert [v for t, _, v in got if t == tag] == values, tag
        assert [ts for t, ts, _ in got if t == tag] == [stamps[v] for v in values], tag
    assert n == len(got) == 80


def test_no_request_asks_for_more_values_than_the_live_path_can_wait_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """One answer is decoded and emitted in one go on the event loop the subscription shares: its size bounds how
    long live values wait (bench at 4958c57, asyncio debug: 0.42 s and 0.52 s with 52 tags x 1,000 values in one
    request). Nodes per request shrink so that nodes x values_per_request stays within the cap."""
    monkeypatch.setattr(opcua_history, "MAX_VALUES_PER_REQUEST", 60, raising=False)

    async def scenario() -> tuple[list[int], int]:
        srv, where, stamps = await _history_server(1000, 40)
        try:
            async with Client(where["url"], timeout=5) as client:
                nodes = {t: client.get_node(ua.NodeId(t, where["ns"])) for t in ("T0", "T1", "T2")}
                asked: list[int] = []
                real = client.uaclient.history_read

                async def counted(params: Any) -> Any:
                    asked.append(len(params.NodesToRead) * params.HistoryReadDetails.NumValuesPerNode)
                    return await real(params)

                monkeypatch.setattr(client.uaclient, "history_read", counted)
                done = await backfill(client, nodes, dict.fromkeys(nodes, stamps[0] - 1),
                                      dict.fromkeys(nodes, stamps[-1] + 1), lambda t, dv: None,
                                      values_per_request=30, max_values_per_s=1e9)
                return asked, done.values
        finally:
            await srv.stop()

    asked, n = asyncio.run(scenario())
    assert n == 120
    assert asked and max(asked) <= 60, asked


def test_backfill_keeps_to_its_pace() -> None:
    async def scenario() -> tuple[float, int]:
        srv, where, stamps = await _history_server(1000, 30)
        try:
            async with Client(where["url"], timeout=5) as client:
                nodes = {t: client.get_node(ua.NodeId(t, where["ns"])) for t in ("T0", "T1", "T2")}
                t0 = time.monotonic()
                done = await backfill(client, nodes, dict.fromkeys(nodes, stamps[0] - 1),
                                      dict.fromkeys(nodes, stamps[-1] + 1), lambda t, dv: None,
                                      values_per_request=10, max_values_per_s=90)
                return time.monotonic() - t0, done.values
        finally:
            await srv.stop()

    elapsed, n = asyncio.run(scenario())
    assert n == 90
    assert elapsed >= 0.9 * (n - 30) / 90, "90 values at 90/s: the last requests wait"


def test_a_first_live_value_later_than_the_wait_still_ends_the_read_of_its_tag() -> None:
    """``make bench`` at f923c05: 66 of 52,451 values the server historized while the collector was dead were in
    neither the backfill nor the live values. Under load the first live value of some tags came after the filler's
    wait (the subscription is made after the filler starts); their read then ended at the session start, and the
    values between it and their first live value were lost. Here T0's first live value is known at once, T1's and
    T2's come only while T0 is read: every value after the stored one and before each first live value is read."""
    async def scenario() -> tuple[list[tuple[str, int]], list[int], int]:
        srv, where, stamps = await _history_server(1000, 40, ahead_s=20)
        try:
            async with Client(where["url"], timeout=5) as client:
                nodes = {t: client.get_node(ua.NodeId(t, where["ns"])) for t in ("T0", "T1", "T2")}
                cfg = OpcUaConnection(**settings(where["url"], nodes=[f"s={t}" for t in nodes]))
                emitter = Emitter(cfg, Counters())
                emitter.stored.advance([_stored(emitter.name_of(t), stamps[5]) for t in nodes])
                got: list[tuple[str, int]] = []

                def emit(tag: str, dv: Any) -> None:
                    got.append((tag, dv_ts_ns(dv) or 0))
                    for late in ("T1", "T2"):  # only while T0 is read: later than the wait
                        filler.live(late, stamps[30])

                filler = GapFiller(cfg, emitter, list(nodes), emit)
                filler.live("T0", stamps[30])
                await filler.run(client, nodes)
                return got, stamps, filler.started_ns
        finally:
            await srv.stop()

    got, stamps, started = asyncio.run(scenario())
    assert started < stamps[30], "the first live values come after the session start"
    for tag in ("T0", "T1", "T2"):
        assert [ts for t, ts in got if t == tag] == stamps[6:30], tag


def test_a_tag_without_any_live_value_is_read_up_to_now_after_the_late_wait(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """T1 never gets a live value (a server that does not send a monitored item's first value): once the late wait
    is over its history is read up to then, said in the log, rather than held for ever or cut at the session start."""
    monkeypatch.setattr(opcua_history, "FIRST_LIVE_WAIT_S", 0.1)
    monkeypatch.setattr(opcua_history, "LATE_LIVE_S", 0.3)

    async def scenario() -> tuple[list[tuple[str, int]], list[int], int, int]:
        srv, where, stamps = await _history_server(1000, 40, ahead_s=20)
        try:
            async with Client(where["url"], timeout=5) as client:
                nodes = {t: client.get_node(ua.NodeId(t, where["ns"])) for t in ("T0", "T1")}
                cfg = OpcUaConnection(**settings(where["url"], nodes=[f"s={t}" for t in nodes], scan_interval_s=0.05))
                emitter = Emitter(cfg, Counters())
                emitter.stored.advance([_stored(emitter.name_of(t), stamps[5]) for t in nodes])
                got: list[tuple[str, int]] = []
                filler = GapFiller(cfg, emitter, list(nodes), lambda t, dv: got.append((t, dv_ts_ns(dv) or 0)))
                filler.live("T0", stamps[30])
                await filler.run(client, nodes)
                return got, stamps, filler.started_ns, filler.first_live["T1"]
        finally:
            await srv.stop()

    got, stamps, started, read_to = asyncio.run(scenario())
    assert [ts for t, ts in got if t == "T0"] == stamps[6:30]
    t1 = [ts for t, ts in got if t == "T1"]
    assert t1 == [ts for ts in stamps[6:] if ts < read_to]
    assert t1[-1] > started, "what the server made after the session start is read too"
    assert "no live value of 1 tags (T1)" in caplog.text


# --- the durable timestamps -----------------------------------------------------------------------------------------
def _stored(tag: str, ts: int) -> Record:
    return Record("hist", tag, 1.0, Quality.GOOD, ts, ts + 5, 1, Kind.VALUE, 0, Flag.SERVER_TS)


def _rec(ts: int, flags: int) -> Record:
    return Record("c", "t", 1.0, Quality.GOOD, ts, ts + 5, ts, Kind.VALUE, 0, flags)


def test_the_durable_timestamp_waits_for_a_backfill_to_be_stored(tmp_path: Path) -> None:
    path = tmp_path / "last_source_ts" / "c.json"
    state = LastStored.load(path)

    def durable() -> tuple[int, int] | None:
        state.save()
        return LastStored.load(path).get("t")

    assert state.advance([_rec(100, Flag.SERVER_TS)]) and durable() == (100, 105)
    assert not state.advance([Record("c", "t", None, Quality.BAD, 900, 900, 1)]), "a gateway stamp says nothing"
    state.hold({"t": 100})  # a backfill of (100, ...) starts
    state.advance([_rec(500, Flag.SERVER_TS)])  # live values of the new session are stored first
    assert durable() == (100, 505), "a kill now must read the gap again"
    state.advance([_rec(200, Flag.BACKFILL)])
    assert durable() == (200, 505)
    state.release("t", 300)  # the backfill emitted up to 300, not stored yet
    state.advance([_rec(600, Flag.SERVER_TS)])
    assert durable() == (200, 605)
    state.advance([_rec(300, Flag.BACKFILL)])
    assert durable() == (600, 605), "the whole gap is stored: the hold ends"
    path.write_text("{not json")
    assert LastStored.load(path).get("t") is None, "a damaged file starts afresh"
