"""OPC UA history: what a collector killed with SIGKILL misses, and how fast missed values come back.

The simulator (synthetic plant at ``SPEED`` times real time, OPC UA endpoint only) historizes its process tags
(simulator/opcua_history.py). One collector process, the real component entry point, subscribes to all 53 process
tags (``queue_size`` large enough that the live link loses nothing). After a warm-up it is killed with SIGKILL, stays
down ``KILL_S`` seconds and is restarted on the same store; ``SETTLE_S`` later it is stopped. The window from
``LEAD_S`` before the kill (values read but not yet flushed die with the process) to ``LEAD_S`` after the restart is
then read from the server's history with a bare asyncua client and compared with the stream:

- ``collector.opcua.gap_after_kill_values``: values the server historized in that window that are not in the
  stream (same tag and source timestamp, to the microsecond). 0 when the collector backfills from history;
- ``collector.opcua.gap_window_values``: values the server historized in the window (what was at stake);
- ``collector.opcua.history_read_values_per_s``: the window read back with a bare asyncua client
  (HistoryReadRawModified of every tag in one request, ``PAGE`` values per tag, then continuation points), values
  per second of wall time;
- ``collector.opcua.backfill_values_per_s`` (only when the collector marked records ``backfill``): backfilled
  records over the time from the restarted collector's first to its last backfilled record (gateway timestamps),
  with ``backfill.max_values_per_s`` raised to ``BACKFILL_PACE`` so that the figure is what backfill can do;
- ``collector.opcua.backfilled_values``: how many records the collector marked ``backfill``.

About ``SPEED`` x 33 values change per wall second (the synthetic plant's analyzers and XMV 12 hold), so the window
holds about 60,000. The bench takes about a minute. Run alone: ``python bench/bench_opcua_backfill.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import report, write_config  # noqa: E402
from devkit.peers import Proc, free_port, port_open, start, wait_for  # noqa: E402
from gateway.record import Flag, Kind  # noqa: E402
from gateway.sources.opcua_config import OpcUaConnection  # noqa: E402
from gateway.streams import PositionStore, RecordReader  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402
from simulator.tags import PROCESS_TAGS  # noqa: E402

SPEED = 50.0
WARMUP_S = 5.0
KILL_S = 30.0
SETTLE_S = 15.0
LEAD_S = 1.0
BACKFILL_PACE = 1_000_000.0  # backfill.max_values_per_s
PAGE = 1000  # NumValuesPerNode of the bare client's history reads
STREAM = "factoryedge-opcua"
URI = "urn:factoryedge:tep"
COLLECTOR = "components.opcua_collector.main"


@dataclass
class Run:
    folder: Path
    port: int
    kill_ns: int = 0
    restart_ns: int = 0


def _simulator(folder: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcua",
                  "--opcua-port", str(port), "--speed", f"{SPEED:g}", "--status-every", "0"], folder / "sim.log")
    wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 60, "the simulator's OPC UA endpoint")
    assert proc.popen.poll() is None, proc.output()
    return proc, port


def _config(run: Run) -> Path:
    connection: dict[str, Any] = {
        "name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{run.port}", "namespace_uri": URI,
        "nodes": [f"s={t.path}" for t in PROCESS_TAGS],
        # 5 changes per tag per publish at SPEED 50: a queue of 20 loses nothing on the live link
        "publishing_interval_ms": 100, "queue_size": 20, "timeout_s": 20,
    }
    if "backfill" in OpcUaConnection.model_fields:
        # what backfill can do, not its pace: the default pace is the very figure the bench checks
        connection["backfill"] = {"max_values_per_s": BACKFILL_PACE}
    return write_config(run.folder, STREAM, [connection])


def _collector(run: Run, config: Path) -> Proc:
    proc = start([sys.executable, "-m", COLLECTOR, "--config", str(config)], run.folder / "collector.log")
    wait_for(lambda: (run.folder / "store" / "status").exists() or proc.popen.poll() is not None, 60,
             "the collector to start")
    assert proc.popen.poll() is None, proc.output()[-2000:]
    return proc


def _kill_and_restart(run: Run) -> None:
    config = _config(run)
    collector = _collector(run, config)
    try:
        time.sleep(WARMUP_S)  # a benchmark interval, not synchronisation
        run.kill_ns = time.time_ns()
        os.kill(collector.pid, signal.SIGKILL)
        collector.popen.wait(10)
        time.sleep(KILL_S)
        run.restart_ns = time.time_ns()
        collector = _collector(run, config)
        time.sleep(SETTLE_S)
    finally:
        code = collector.stop()
    assert code == 0, f"collector exit code {code}: {collector.output()[-2000:]}"


def _stream(folder: Path) -> tuple[set[tuple[str, int]], list[int]]:
    """(tag, source µs) of every value record, and the gateway timestamps of the backfilled ones."""
    reader = RecordReader(EmbeddedStore(folder / "store"), STREAM, "bench", PositionStore(folder / "pos"))
    seen: set[tuple[str, int]] = set()
    backfilled: list[int] = []
    while True:
        batch = reader.poll(max_messages=1000, timeout_s=0)
        if not batch.messages:
            return seen, backfilled
        for r in batch.records:
            if r.kind == Kind.VALUE:
                seen.add((r.tag, (r.source_ts_ns + 500) // 1000))
                if r.flags & Flag.BACKFILL:
                    backfilled.append(r.gateway_ts_ns)
        reader.position = batch.next_seq


async def _history(port: int, start_ns: int, end_ns: int) -> tuple[set[tuple[str, int]], float]:
    """(tag, source µs) of every value historized in the window, and the seconds reading it took: one
    HistoryRead request for all tags, then one per round of continuation points."""
    from asyncua import Client, ua

    from simulator.opcua_history import to_us

    def stamp(ns: int) -> datetime:
        return datetime.fromtimestamp(ns / 1e9, timezone.utc)

    async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=30) as client:
        ns = await client.get_namespace_index(URI)
        ids = {t.path: client.get_node(f"ns={ns};s={t.path}").nodeid for t in PROCESS_TAGS}
        details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=stamp(start_ns), EndTime=stamp(end_ns),
                                            NumValuesPerNode=PAGE, ReturnBounds=False)
        values: set[tuple[str, int]] = set()
        pending: list[tuple[str, bytes | None]] = [(path, None) for path in ids]
        started = time.perf_counter()
        while pending:
            params = ua.HistoryReadParameters(HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
                                              ReleaseContinuationPoints=False,  # asyncua's default is true
                                              NodesToRead=[ua.HistoryReadValueId(NodeId=ids[path], ContinuationPoint=cp)
                                                           for path, cp in pending])
            results = await client.uaclient.history_read(params)
            follow: list[tuple[str, bytes | None]] = []
            for (path, _), result in zip(pending, results, strict=True):
                result.StatusCode.check()
                for dv in result.HistoryData.DataValues:
                    assert dv.SourceTimestamp is not None, "the simulator stamps every value"
                    values.add((path, to_us(dv.SourceTimestamp)))
                if result.ContinuationPoint:
                    follow.append((path, result.ContinuationPoint))
            pending = follow
        return values, time.perf_counter() - started


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        folder = Path(tmp)
        sim, port = _simulator(folder)
        run = Run(folder, port)
        try:
            _kill_and_restart(run)
            lead = int(LEAD_S * 1e9)
            historized, seconds = asyncio.run(_history(port, run.kill_ns - lead, run.restart_ns + lead))
        finally:
            sim.stop()
        seen, backfilled = _stream(folder)
    figures: dict[str, Any] = {
        "collector.opcua.gap_after_kill_values": float(len(historized - seen)),
        "collector.opcua.gap_window_values": float(len(historized)),
        "collector.opcua.history_read_values_per_s": len(historized) / seconds,
        "collector.opcua.backfilled_values": float(len(backfilled)),
    }
    if len(backfilled) > 1:
        span_s = (max(backfilled) - min(backfilled)) / 1e9
        figures["collector.opcua.backfill_values_per_s"] = len(backfilled) / max(span_s, 1e-3)
    return figures


if __name__ == "__main__":
    report(run)
