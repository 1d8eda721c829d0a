"""Modbus collector CPU per value against the bare libraries on the same server and data (issue 18).

1 PLC x 1,000 holding registers (500 float32 tags, read in the collector's own plan of 9 requests of at most 124
registers) from the libmodbus test server (tests/peers/modbus_server.c, ``-m``: every read changes the values, so the
deadband passes them all), read continuously by, in turn:

- ours: the real collector process (``python -m components.modbus_collector.main``) writing into the embedded
  stream; its CPU time over a window / the values it wrote in that window;
- a bare pymodbus client loop (bench/modbus_reference.py) reading the same requests and decoding the floats;
- a bare libmodbus C client (tests/peers/modbus_client_bench.c) doing the same.

The three run one after the other, ``PAIRS`` times (interleaved, so that a change of the machine's load affects all
three), and every figure is the median of the per-round ones:

- ``collector.modbus.cpu_us_per_value``, ``.pymodbus_cpu_us_per_value``, ``.libmodbus_cpu_us_per_value``;
- ``collector.modbus.ratio_vs_pymodbus`` (target >= 0.5) and ``.ratio_vs_libmodbus``: the bare client's CPU per
  value / ours, per round.

``python bench/bench_collector_modbus_cpu.py`` prints the figures and the load.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, modbus_server, write_config  # noqa: E402
from bench.modbus_reference import build_libmodbus_client, libmodbus_loop, pymodbus_loop  # noqa: E402
from gateway.sources.modbus_config import ModbusConnection  # noqa: E402

TAGS = 500  # float32 tags: the 1,000 registers
PAIRS = 3
WARMUP_S = 2.0
WINDOW_S = 5.0
STREAM = "factoryedge-modbus"


def _connection(port: int) -> dict[str, Any]:
    return {"name": "plc", "host": "127.0.0.1", "port": port, "scan_interval_s": 0, "timeout_s": 2,
            "units": [{"unit_id": 1, "tags": [{"name": f"tag{i:04d}", "address": 2 * i, "type": "float32"}
                                               for i in range(TAGS)]}]}


def run() -> dict[str, float]:
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-modbus-cpu-") as tmp:
        folder = Path(tmp)
        client = build_libmodbus_client(folder)
        server, port = modbus_server(folder, TAGS)
        try:
            conn = _connection(port)
            requests = [(r.address, r.count) for r in ModbusConnection.model_validate(conn).requests()]
            for i in range(PAIRS):
                here = folder / f"round{i}"
                here.mkdir()
                w = measure("components.modbus_collector.main", write_config(here, STREAM, [conn]), here, STREAM,
                            warmup_s=WARMUP_S, window_s=WINDOW_S)
                ours = w.cpu_percent / 100 / w.values_per_s * 1e6
                py = pymodbus_loop(port, requests, WARMUP_S, WINDOW_S)
                c = libmodbus_loop(client, port, requests, WARMUP_S, WINDOW_S)
                rounds.append({
                    "cpu_us_per_value": ours, "pymodbus_cpu_us_per_value": py.cpu_us_per_value,
                    "libmodbus_cpu_us_per_value": c.cpu_us_per_value,
                    "ratio_vs_pymodbus": py.cpu_us_per_value / ours, "ratio_vs_libmodbus": c.cpu_us_per_value / ours,
                    "one_plc_values_per_s": w.values_per_s, "pymodbus_values_per_s": py.values_per_s,
                    "libmodbus_values_per_s": c.values_per_s,
                })
                print("  round " + ", ".join(f"{k} {v:.3g}" for k, v in rounds[-1].items()), flush=True)
        finally:
            server.stop()
    return {f"collector.modbus.{key}": round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}


def _report() -> None:
    # collector_window.report prints one decimal: too few for ratios of 0.03
    load = os.getloadavg()
    for key, value in run().items():
        print(f"{key} = {value:.3g}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")


if __name__ == "__main__":
    _report()
