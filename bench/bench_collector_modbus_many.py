"""Memory with many PLCs: one Modbus collector with 200 connections x 20 float32 tags, scanning continuously.

A gateway in front of a line may talk to a couple of hundred small PLCs; what grows with them is the per-connection
state (socket, client, task, pending values) and whatever the collector holds while the stream is busy. One
collector process (the real entry point, as on a gateway) reads 200 connections to the libmodbus test server
(tests/peers/modbus_server.c with ``-m``: every read changes every value, so nothing is suppressed), each with its
own 20 tags, ``scan_interval_s: 0`` (as fast as each connection answers: the worst case for memory).

- ``collector.modbus.rss_mb_200_connections``: the largest RSS sampled in the window (issue 18: <= 80 MB);
- ``collector.modbus.values_per_s_200_connections``: values written per second over the window.

The server, the collector and this script share the machine's cores; ``python bench/bench_collector_modbus_many.py``
prints the figures with the load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, modbus_server, report, write_config  # noqa: E402

CONNECTIONS = 200
TAGS_PER_CONNECTION = 20
WARMUP_S = 5.0  # 200 connects and their first scans settle
WINDOW_S = 8.0
STREAM = "factoryedge-modbus-many"


def _connections(port: int) -> list[dict[str, Any]]:
    n = TAGS_PER_CONNECTION
    return [{
        "name": f"plc{c:03d}", "host": "127.0.0.1", "port": port, "scan_interval_s": 0, "timeout_s": 5,
        "units": [{"unit_id": 1, "tags": [{"name": f"plc{c:03d}/tag{i:02d}", "address": 2 * (c * n + i),
                                           "type": "float32"} for i in range(n)]}],
    } for c in range(CONNECTIONS)]


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-modbus-many-") as tmp:
        folder = Path(tmp)
        server, port = modbus_server(folder, CONNECTIONS * TAGS_PER_CONNECTION)
        try:
            w = measure("components.modbus_collector.main", write_config(folder, STREAM, _connections(port)),
                        folder, STREAM, warmup_s=WARMUP_S, window_s=WINDOW_S)
        finally:
            server.stop()
    return {"collector.modbus.rss_mb_200_connections": w.rss_mb,
            "collector.modbus.values_per_s_200_connections": w.values_per_s}


if __name__ == "__main__":
    report(run)
