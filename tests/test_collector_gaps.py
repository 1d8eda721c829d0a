"""A stopped, killed or refused collector leaves no invisible hole (issue 13, items A and D; item 14 for metrics).

The Modbus collector runs as its real component process against the independent libmodbus server: a kill -9 and a
restart make a gap record (``collector/<connection>/gap``, Kind.METRIC, BAD, source time t1 = last value written,
gateway time t2 = first value read after the restart, value = t2 - t1 in seconds) and the per-source sequence goes
on from where it stood; SIGTERM leaves nothing read but unwritten. In process: values a full stream refuses at stop
are an ERROR naming how many, and the collector's counters go into its stream as METRIC records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import ROOT, Proc, start, wait_for
from gateway.codec import decode_batch
from gateway.collector import Collector
from gateway.collector_state import SEQ_RESERVE
from gateway.record import Kind, Quality, Record, make_record
from gateway.sources.common import ConnectionBase, Emitter
from gateway.streams import StreamSpec
from gateway.streams.base import StrategyOnFull
from gateway.streams.embedded import EmbeddedStore
from tests.support.modbus_peer import LibModbus, compile_server

COMPONENT = "factoryedge.ModbusCollector"
STREAM = "modbus"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("libmodbus")
    peer = LibModbus(compile_server(folder), folder / "srv", {1: {"hr": {0: list(range(10))}}}, mutate=True)
    yield peer
    peer.stop()


def write_config(tmp: Path, port: int) -> Path:
    cfg = {
        "store": {"kind": "embedded", "path": str(tmp / "data")}, "status_interval_s": 0.2,
        "stream": {"name": STREAM},
        "connections": [{
            "type": "modbus", "name": "plc", "host": "127.0.0.1", "port": port, "scan_interval_s": 0.05,
            "timeout_s": 0.5, "flush_interval_s": 0.05, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
            "units": [{"unit_id": 1, "tags": [{"name": f"r{i}", "address": i, "type": "uint16"} for i in range(4)]}],
        }],
    }
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(tmp: Path, cfg: Path, n: int) -> Proc:
    return start([sys.executable, str(ROOT / "components/modbus_collector/main.py"), "--config", str(cfg)],
                 tmp / f"collector{n}.log", env={"PYTHONPATH": str(ROOT)})


def stored(tmp: Path) -> list[Record]:
    store = EmbeddedStore(tmp / "data")
    try:
        if STREAM not in store.list_streams():
            return []
        info = store.describe(STREAM)
        out: list[Record] = []
        for msg in store.read(STREAM, info.oldest_seq, max_count=1_000_000):
            out += decode_batch(msg.payload)
        return out
    finally:
        store.close()


def values(recs: list[Record]) -> list[Record]:
    return [r for r in recs if r.source == "plc" and r.kind == Kind.VALUE]


def gaps(recs: list[Record]) -> list[Record]:
    return [r for r in recs if r.source == "plc" and r.tag == "collector/plc/gap"]


def status(tmp: Path) -> dict[str, Any]:
    return dict(json.loads((tmp / "data" / "status" / f"{COMPONENT}.json").read_bytes()))


def test_kill9_and_restart_records_the_gap_and_the_seq_goes_on(server: LibModbus, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server.port)
    first = launch(tmp_path, cfg, 1)
    try:
        wait_for(lambda: len(values(stored(tmp_path))) >= 40, 60, f"values from the first run\n{first.output()}")
        first.stop(signal.SIGKILL)
        killed_ns = time.time_ns()
        before = values(stored(tmp_path))
        assert not gaps(stored(tmp_path)), "a first start has no gap to report"
    finally:
        first.stop(signal.SIGKILL)
    second = launch(tmp_path, cfg, 2)
    try:
        wait_for(lambda: bool(gaps(stored(tmp_path))), 60, f"a gap record after the restart\n{second.output()}")
        wait_for(lambda: status(tmp_path)["connections"].get("plc", {}).get("gaps", 0) >= 1, 30,
                 "the gap counted in the status file")
    finally:
        second.stop()
    recs = stored(tmp_path)
    [gap] = gaps(recs)
    after = [r for r in values(recs) if r.gateway_ts_ns > killed_ns]
    assert after, "values after the restart"
    last_before = max(before, key=lambda r: r.seq)
    # t1: the last value written before the kill (a kill between a write and its marker loses at most one flush)
    assert last_before.gateway_ts_ns - 1_000_000_000 <= gap.source_ts_ns <= last_before.gateway_ts_ns
    # t2: the first value read after the restart
    assert gap.gateway_ts_ns == min(r.gateway_ts_ns for r in after)
    assert gap.gateway_ts_ns > killed_ns
    assert gap.quality == Quality.BAD and gap.kind == Kind.METRIC
    assert gap.value == pytest.approx((gap.gateway_ts_ns - gap.source_ts_ns) / 1e9, abs=1e-3)
    # the per-source sequence goes on and never repeats a number (a batch that reached the stream after the marker
    # last moved is below the reserved block): the gap takes the next number above it, the values follow it
    assert 0 < gap.seq - last_before.seq <= SEQ_RESERVE + 1
    assert min(r.seq for r in after) == gap.seq + 1
    assert len({r.id for r in recs}) == len(recs)


def test_sigterm_leaves_no_value_read_but_unwritten(server: LibModbus, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server.port)
    proc = launch(tmp_path, cfg, 1)
    try:
        wait_for(lambda: len(values(stored(tmp_path))) >= 40, 60, f"values flowing\n{proc.output()}")
    finally:
        assert proc.stop(signal.SIGTERM) == 0, proc.output()
    k = status(tmp_path)["connections"]["plc"]
    assert k["values_read"] == k["values_written"] + k["values_suppressed"] + k["values_dropped"], k
    assert k["values_dropped"] == 0
    assert len(values(stored(tmp_path))) == k["values_written"]
    metrics = {r.tag: r.value for r in stored(tmp_path) if r.kind == Kind.METRIC and r.source == COMPONENT}
    assert metrics.get("collector/plc/values_written") == k["values_written"], sorted(metrics)


# --- in process: a fake source that reads as fast as it is let -------------------------------------------------------
class Burst:
    """Emits ``count`` values, then waits to be cancelled (a peer that stays connected)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, cfg: Any) -> Burst:
        return self

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        on_connected()
        for i in range(self.count):
            emitter.emit(f"t{i % 50}", float(i), Quality.GOOD)
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.Event().wait()


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_values_refused_at_stop_are_an_error_with_their_count(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    spec = StreamSpec(name=STREAM, max_size_bytes=4096, segment_size_bytes=1024,
                      strategy_on_full=StrategyOnFull.REJECT_NEW_DATA)
    collector = Collector("test", EmbeddedStore(tmp_path / "store"), spec, Burst(20_000))
    conn = ConnectionBase(name="plc", flush_interval_s=0.05)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([conn], stop))
        await _until(lambda: "plc" in collector.connections and collector.connections["plc"].counters.values_read
                     >= 20_000, "the burst to be read")
        await _until(lambda: bool(collector.connections["plc"].backlog), "the full stream to refuse")
        stop.set()
        await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(go())
    k = collector.connections["plc"].counters
    assert k.values_dropped > 0
    assert k.values_read == k.values_written + k.values_suppressed + k.values_dropped
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"dropped {k.values_dropped} values" in m for m in errors), errors


def test_collector_counters_go_into_its_stream_as_metric_records(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    collector = Collector("factoryedge.Test", store, StreamSpec(name=STREAM), Burst(500), metrics_interval_s=0.1)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([ConnectionBase(name="plc", flush_interval_s=0.05)], stop))

        def metric_seen() -> bool:
            if STREAM not in store.list_streams():
                return False
            info = store.describe(STREAM)
            return any(r.kind == Kind.METRIC for m in store.read(STREAM, 0, max_count=info.next_seq or 1)
                       for r in decode_batch(m.payload))
        await _until(metric_seen, "metric records in the collector's stream")
        stop.set()
        await task

    asyncio.run(go())
    info = store.describe(STREAM)
    recs = [r for m in store.read(STREAM, 0, max_count=info.next_seq) for r in decode_batch(m.payload)]
    metrics = [r for r in recs if r.kind == Kind.METRIC]
    tags = {r.tag for r in metrics}
    for key in ("values_read", "values_written", "values_dropped", "read_errors", "gaps", "gap_s"):
        assert any(t.endswith(f"/{key}") for t in tags), (key, sorted(tags))
    assert all(r.source == "factoryedge.Test" and r.quality == Quality.GOOD for r in metrics)
    last = {r.tag: r.value for r in sorted(metrics, key=lambda r: r.seq)}
    assert last["collector/plc/values_read"] == 500
    store.close()


def test_a_batch_stored_after_the_marker_last_moved_never_shares_numbers_with_the_restart(tmp_path: Path) -> None:
    """A kill between the stream append and the marker's move (the soak saw it as records out of order per tag):
    the restart continues above the reserved block, not from the stale marker."""
    store = EmbeddedStore(tmp_path / "store")
    spec = StreamSpec(name=STREAM)
    store.create_stream(spec)
    first = Collector("factoryedge.Test", store, spec, Burst(0), state_dir=tmp_path / "state")
    batch = [make_record("plc", "t", float(i), seq=100 + i) for i in range(10)]
    first._append({"plc": batch})
    unmarked = [make_record("plc", "t", float(i), seq=110 + i) for i in range(10)]
    first._writer.write(unmarked)  # reached the stream; the process died before the marker moved
    marker = Collector("factoryedge.Test", store, spec, Burst(0), state_dir=tmp_path / "state").state.read_marker("plc")
    assert marker is not None and marker[0] + 1 > max(r.seq for r in unmarked)
    assert marker[1] == batch[-1].gateway_ts_ns  # the gap still starts at the last value the marker saw
