"""The simulator's OPC UA history (simulator/opcua_history.py) read with a bare asyncua client.

Every value a test publishes by stepping the plant is expected back from HistoryReadRawModified, exactly (source
timestamp and value), page by page through continuation points, forwards and backwards, and within the retention
bounds (count through the endpoint, age on the ring itself).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client
from asyncua import ua as _ua

from devkit.peers import free_port
from simulator.opcua_history import TagHistory, to_us
from simulator.opcua_server import OpcUaConfig, OpcUaEndpoint
from simulator.plant import SyntheticPlant
from simulator.runtime import Simulation, Snapshot
from simulator.tags import PROCESS_TAGS
from tests.support.simulator import start_simulator

NS_URI = "urn:factoryedge:tep"
MAX_VALUES = 2000  # the endpoint's per-tag bound in these tests
TAG = "Reactor/Pressure"  # changes at every step
INDEX = [t.path for t in PROCESS_TAGS].index(TAG)
T = TypeVar("T")
ua: Any = _ua  # asyncua's NewType annotations reject the plain ints and strings its runtime takes


class Served:
    def __init__(self, sim: Simulation, endpoint: OpcUaEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.sim, self.endpoint, self.loop = sim, endpoint, loop
        self.url = endpoint.config.url

    def steps(self, n: int) -> list[tuple[datetime, float]]:
        """Step the plant ``n`` times, each step written by the endpoint; the (stamp, value) of TAG each step
        changed, oldest first."""
        previous: Snapshot = self.sim.snapshot
        changes = []
        for _ in range(n):
            snap = self.sim.advance(1)
            asyncio.run_coroutine_threadsafe(self.endpoint.published(), self.loop).result(10)  # each step written
            if snap.stamps[INDEX] != previous.stamps[INDEX]:
                changes.append((snap.stamps[INDEX], snap.values[INDEX]))
            previous = snap
        return changes

    def client(self, body: Callable[[Client, int], Awaitable[T]]) -> T:
        async def session() -> T:
            async with Client(self.url, timeout=10) as client:
                return await body(client, await client.get_namespace_index(NS_URI))

        return asyncio.run(session())


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    sim = Simulation(SyntheticPlant(), seed=3)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sim-history", daemon=True)
    thread.start()
    endpoint = OpcUaEndpoint(sim, OpcUaConfig(port=free_port(), history_max_values=MAX_VALUES))
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(60)
    try:
        yield Served(sim, endpoint, loop)
    finally:
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _details(start: datetime | None, end: datetime | None, per_node: int) -> Any:
    details = ua.ReadRawModifiedDetails()
    details.IsReadModified = False
    details.StartTime = start or ua.get_win_epoch()
    details.EndTime = end or ua.get_win_epoch()
    details.NumValuesPerNode = per_node
    details.ReturnBounds = False
    return details


async def _attr(node: Any, attr: Any) -> Any:
    return (await node.read_attribute(attr)).Value.Value


async def _pages(node: Any, details: Any) -> list[list[tuple[datetime, float]]]:
    """Every page of one history read, following continuation points to the end."""
    pages, point = [], None
    while True:
        result = await node.history_read(details, point)
        result.StatusCode.check()
        pages.append([(dv.SourceTimestamp, dv.Value.Value) for dv in result.HistoryData.DataValues])
        point = result.ContinuationPoint
        if not point:
            return pages
        assert len(pages) < 100, "continuation points that never end"


def test_process_tags_are_historized_and_nothing_else(served: Served) -> None:
    async def body(client: Client, ns: int) -> None:
        for tag in PROCESS_TAGS:
            node = client.get_node(f"ns={ns};s={tag.path}")
            assert await _attr(node, ua.AttributeIds.Historizing) is True, tag.path
            for level in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                assert await _attr(node, level) & ua.AccessLevel.HistoryRead.mask, tag.path
        capability = client.get_node(ua.NodeId(ua.ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability))
        assert await capability.read_value() is True
        now = datetime.now().astimezone()
        for path in ("Simulator/SimulatedTime", "Disturbances/IDV01", f"{TAG}/EURange"):
            node = client.get_node(f"ns={ns};s={path}")
            assert await _attr(node, ua.AttributeIds.Historizing) is False, path
            result = await node.history_read(_details(now - timedelta(hours=1), now, 0))
            assert result.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported, path
        pressure = client.get_node(f"ns={ns};s={TAG}")
        result = await pressure.history_read(_details(None, None, 10))
        assert result.StatusCode.value == ua.StatusCodes.BadHistoryOperationInvalid

    served.client(body)


def test_history_read_returns_every_published_value_page_by_page(served: Served) -> None:
    expected = served.steps(1500)
    assert len(expected) == 1500
    first, last = expected[0][0], expected[-1][0]

    async def body(client: Client, ns: int) -> None:
        node = client.get_node(f"ns={ns};s={TAG}")
        pages = await _pages(node, _details(first, last, 600))
        assert [len(p) for p in pages] == [600, 600, 300]
        assert [v for p in pages for v in p] == expected
        # the server's own page limit, followed by asyncua's read_raw_history
        history = served.endpoint.history
        assert history is not None
        history.max_history_data_response_size = 400
        try:
            values: list[Any] = await node.read_raw_history(first, last)
        finally:
            history.max_history_data_response_size = 10_000
        assert [(dv.SourceTimestamp, dv.Value.Value) for dv in values] == expected
        backwards = await _pages(node, _details(last, first, 700))
        assert [len(p) for p in backwards] == [700, 700, 100]
        assert [v for p in backwards for v in p] == expected[::-1]
        newest = await node.history_read(_details(None, last, 5))
        assert [(dv.SourceTimestamp, dv.Value.Value) for dv in newest.HistoryData.DataValues] == expected[:-6:-1]

    served.client(body)


def test_history_holds_exactly_the_values_subscribers_were_sent(served: Served) -> None:
    """The history is the server's record of its nodes' values, as asyncua's own historizing is (an internal
    subscription): a value the endpoint never wrote to the node (steps it coalesced while busy) is not in it.
    Before, ``make bench``'s gap figure counted 1 value of each of 52 tags the collector could never have read live:
    history held a step the endpoint had skipped while serving a large history read."""
    from asyncua.common.subscription import DataChangeNotif

    sim, loop = served.sim, served.loop
    got: list[tuple[datetime, float]] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
            dv = data.monitored_item.Value
            got.append((dv.SourceTimestamp, dv.Value.Value))

    async def burst() -> Snapshot:
        """Five steps while the endpoint's loop is busy (here: with us), as under load; then let it write."""
        for _ in range(5):
            snap = sim.advance(1)
        await served.endpoint.published()
        return snap

    async def body(client: Client, ns: int) -> tuple[datetime, list[tuple[datetime, float]]]:
        node = client.get_node(f"ns={ns};s={TAG}")
        sub = await client.create_subscription(20, Handler())
        await sub.subscribe_data_change(node, queuesize=1000)
        first = sim.snapshot.stamps[INDEX]
        last = first
        for _ in range(20):
            last = asyncio.run_coroutine_threadsafe(burst(), loop).result(10).stamps[INDEX]
        deadline = asyncio.get_running_loop().time() + 10
        while not got or got[-1][0] < last:
            assert asyncio.get_running_loop().time() < deadline, f"the last value never came: {got[-3:]}"
            await asyncio.sleep(0.02)
        pages = await _pages(node, _details(first + timedelta(microseconds=1), last, 0))
        return first, [v for p in pages for v in p]

    first, history = served.client(body)
    live = [v for v in got if v[0] > first]
    assert history == live
    assert 20 <= len(history) < 100, "the bursts were coalesced (else the test shows nothing)"


def test_one_request_reads_every_tag_and_releasing_a_point_reads_nothing(served: Served) -> None:
    expected = served.steps(300)
    first, last = expected[0][0], expected[-1][0]

    async def body(client: Client, ns: int) -> None:
        ids = [client.get_node(f"ns={ns};s={t.path}").nodeid for t in PROCESS_TAGS]
        params = ua.HistoryReadParameters(  # ReleaseContinuationPoints left at asyncua's default (true)
            HistoryReadDetails=_details(first, last, 200),
            NodesToRead=[ua.HistoryReadValueId(NodeId=node_id) for node_id in ids])
        results = await client.uaclient.history_read(params)
        assert len(results) == len(PROCESS_TAGS)
        assert all(r.StatusCode.is_good() for r in results)
        pressure = results[INDEX]
        assert [(dv.SourceTimestamp, dv.Value.Value) for dv in pressure.HistoryData.DataValues] == expected[:200]
        assert pressure.ContinuationPoint
        params.NodesToRead = [ua.HistoryReadValueId(NodeId=ids[INDEX], ContinuationPoint=pressure.ContinuationPoint)]
        params.ReleaseContinuationPoints = True
        (released,) = await client.uaclient.history_read(params)
        assert released.StatusCode.is_good() and not getattr(released.HistoryData, "DataValues", None)
        params.ReleaseContinuationPoints = False
        (rest,) = await client.uaclient.history_read(params)
        assert [(dv.SourceTimestamp, dv.Value.Value) for dv in rest.HistoryData.DataValues] == expected[200:]

    served.client(body)


def test_history_keeps_at_most_its_bound_per_tag(served: Served) -> None:
    expected = served.steps(MAX_VALUES + 500)
    history = served.endpoint.history
    assert history is not None
    ns = served.endpoint.ns
    assert all(history.values(ua.NodeId(t.path, ns)) <= MAX_VALUES for t in PROCESS_TAGS)

    async def body(client: Client, ns: int) -> list[tuple[datetime, float]]:
        node = client.get_node(f"ns={ns};s={TAG}")
        pages = await _pages(node, _details(expected[0][0] - timedelta(days=1), None, 0))
        return [v for p in pages for v in p]

    assert served.client(body) == expected[-MAX_VALUES:]


def test_a_trip_is_historized_as_bad_out_of_service(served: Served) -> None:
    sim = served.sim
    sim.set_idv(6, True)
    tripped = sim.advance(8 * 3600)  # the synthetic plant trips 7.5 h after IDV 6
    assert tripped.shutdown
    try:
        async def body(client: Client, ns: int) -> Any:
            node = client.get_node(f"ns={ns};s={TAG}")
            return (await node.history_read(_details(None, tripped.stamps[INDEX], 1))).HistoryData.DataValues

        (last,) = served.client(body)
        assert last.StatusCode.value == ua.StatusCodes.BadOutOfService
        assert last.Value.Value is None
        assert last.SourceTimestamp == tripped.stamps[INDEX]
    finally:
        sim.clear_idvs()
        sim.reset()


def test_ring_bounds_by_age_and_count_and_searches_across_the_wrap() -> None:
    rng = random.Random(7)
    ring, model = TagHistory(max_values=300, retention_us=50_000), list[tuple[int, float, int]]()
    ts = 1_000_000
    for n in range(5000):
        ts += rng.randint(1, 200)
        assert ring.append(ts, float(n), 0)
        model = [r for r in [*model, (ts, float(n), 0)] if r[0] >= ts - 50_000][-300:]
        if n % 97 == 0:
            assert ring.rows(0, len(ring)) == model
            probe = rng.randint(model[0][0] - 10, ts + 10)
            assert ring.index(probe) == sum(r[0] < probe for r in model)
            assert ring.index(probe, after=True) == sum(r[0] <= probe for r in model)
    assert not ring.append(ts, 1.0, 0), "a value not newer than the newest is refused"
    assert 0 < len(ring) <= 300


def test_history_options_on_the_command_line(tmp_path: Path) -> None:
    text = subprocess.run([sys.executable, "-m", "simulator", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "--opcua-history-s" in text and "--opcua-history-values" in text
    proc, port = start_simulator(tmp_path, speed=10, extra=["--opcua-history-s", "0"])
    try:
        async def body() -> Any:
            async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=10) as client:
                ns = await client.get_namespace_index(NS_URI)
                node = client.get_node(f"ns={ns};s={TAG}")
                return await _attr(node, ua.AttributeIds.Historizing)

        assert asyncio.run(body()) is False
    finally:
        proc.stop()
    assert to_us(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000  # a naive time is UTC
