"""Modbus collector throughput and memory: float32 tags from the libmodbus server into the embedded stream.

One collector process, the real component entry point (``python -m components.modbus_collector.main --config``),
reads ``TAGS`` float32 tags continuously (``scan_interval_s: 0``) from the libmodbus test server
(tests/peers/modbus_server.c, run with ``-m`` so every read changes the values and the deadband passes them all).
After a warm-up the records whose gateway timestamp falls in a fixed window are counted in the stream, once the
process has stopped (so counting costs the collector nothing).

- ``collector.modbus.values_per_s``: records written per second over the window (target >= 50,000);
- ``collector.modbus.rss_mb``: the collector's largest resident set size sampled in the window (target <= 80).

The server, the collector and this script share the machine's cores; run ``python bench/bench_collector_modbus.py``
to print the figures and the load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, modbus_server, report, write_config  # noqa: E402

TAGS = 4000  # float32 tags = 8,000 holding registers = 65 requests of at most 124 registers
# The tags split over this many TCP connections to the same server. pymodbus keeps one request in flight per
# connection; a second one lets the loop decode one answer while the next is on the wire. The collector is CPU-bound
# (per value: decode, deadband, record, stream encode), so 1, 2 and 3 connections measured within the noise of a
# loaded 2-core machine (38k-77k values/s at load 5); more only add sockets.
CONNECTIONS = 2
WARMUP_S = 3.0
WINDOW_S = 8.0
STREAM = "factoryedge-modbus"


def _connections(port: int) -> list[dict[str, Any]]:
    per = TAGS // CONNECTIONS
    return [{
        "name": f"plc{c}", "host": "127.0.0.1", "port": port, "scan_interval_s": 0, "timeout_s": 2,
        "units": [{"unit_id": 1, "tags": [{"name": f"line{c}/tag{i:05d}", "address": 2 * i, "type": "float32"}
                                           for i in range(c * per, (c + 1) * per)]}],
    } for c in range(CONNECTIONS)]


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp:
        folder = Path(tmp)
        server, port = modbus_server(folder, TAGS)
        try:
            w = measure("components.modbus_collector.main", write_config(folder, STREAM, _connections(port)),
                        folder, STREAM, warmup_s=WARMUP_S, window_s=WINDOW_S)
        finally:
            server.stop()
    return {"collector.modbus.values_per_s": w.values_per_s, "collector.modbus.rss_mb": w.rss_mb,
            "collector.modbus.cpu_percent": w.cpu_percent}


if __name__ == "__main__":
    report(run)
