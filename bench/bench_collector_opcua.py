"""OPC UA collector throughput, CPU and memory: value changes from node-opcua into the embedded stream.

The independent node-opcua peer (tests/peers/opcua_server.js) changes ``VARIABLES`` doubles ``RATE`` times a second;
one collector process, the real component entry point (``python -m components.opcua_collector.main --config``),
subscribes to all of them over ``CONNECTIONS`` sessions (one subscription each, NOTES 4). After a warm-up, the
records whose gateway timestamp falls in a fixed window are counted in the stream once the process has stopped (so
counting costs the collector nothing).

- ``collector.opcua.values_per_s``: records written per second over the window (target >= 8,000);
- ``collector.opcua.server_changes_per_s``: value changes the server actually made per second in the window (its
  own count, read with SIGUSR2): what was on offer. node-opcua on this box tops out near 10,000 notifications/s;
- ``collector.opcua.cpu_percent``: the collector's CPU time over the window, percent of one core;
- ``collector.opcua.rss_mb``: the collector's largest resident set size sampled in the window (target <= 80).

The server, the collector and this script share the machine's cores; run ``python bench/bench_collector_opcua.py``
to print the figures and the load.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, report, write_config  # noqa: E402
from devkit.peers import Proc, free_port, start, wait_for  # noqa: E402

VARIABLES = 2000
RATE = 5.0  # changes per variable per second: 10,000 offered, about what node-opcua here can notify
CONNECTIONS = 2  # sessions; asyncua keeps one publish request in flight per session
WARMUP_S = 5.0
WINDOW_S = 10.0
STREAM = "factoryedge-opcua"
URI = "urn:factoryedge:test"


def _server(folder: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = start(["node", str(ROOT / "tests" / "peers" / "opcua_server.js"), "--port", str(port), "--pki",
                  str(folder / "pki"), "--variables", str(VARIABLES), "--rate", str(RATE)], folder / "server.log")
    wait_for(lambda: "READY" in proc.output() or proc.popen.poll() is not None, 120, "node-opcua READY")
    assert proc.popen.poll() is None, proc.output()
    return proc, port


def _connections(port: int) -> list[dict[str, Any]]:
    per = VARIABLES // CONNECTIONS
    return [{
        "name": f"ua{c}", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": URI,
        "nodes": [f"s=Bulk/V{i}" for i in range(c * per, (c + 1) * per)],
        "publishing_interval_ms": 100, "queue_size": 5, "timeout_s": 20, "keepalive_s": 10, "watchdog_s": 60,
    } for c in range(CONNECTIONS)]


def _changes(server: Proc, n: int) -> int:
    """Ask the server for its change count (its n-th answer)."""
    os.kill(server.pid, signal.SIGUSR2)
    wait_for(lambda: len(re.findall(r"CHANGES (\d+)", server.output())) >= n, 10, "the server's change count")
    return int(re.findall(r"CHANGES (\d+)", server.output())[n - 1])


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        folder = Path(tmp)
        server, port = _server(folder)
        changes: list[int] = []
        try:
            w = measure("components.opcua_collector.main", write_config(folder, STREAM, _connections(port)), folder,
                        STREAM, warmup_s=WARMUP_S, window_s=WINDOW_S,
                        at_start=lambda: changes.append(_changes(server, 1)),
                        at_end=lambda: changes.append(_changes(server, 2)))
        finally:
            server.stop()
    return {"collector.opcua.values_per_s": w.values_per_s,
            "collector.opcua.server_changes_per_s": (changes[1] - changes[0]) / w.seconds,
            "collector.opcua.cpu_percent": w.cpu_percent,
            "collector.opcua.rss_mb": w.rss_mb}


if __name__ == "__main__":
    report(run)
