"""OPC DA collector throughput and memory: group reads from the simulator's OpenOPC gateway into the embedded stream.

One collector process, the real component entry point (``python -m components.opcda_collector.main --config``),
reads every item the simulator's OPC DA endpoint offers (browse pattern ``*``, 86 items) with one named-group read
per scan, as fast as the gateway answers (``scan_interval_s: 0.001``), over ``CONNECTIONS`` sessions. The deadband
heartbeat is set below the scan interval so every value read is written: the figure measures the collector (Pyro
round trip, decoding, records, stream appends), not how often the plant changes. After a warm-up the records whose
gateway timestamp falls in a fixed window are counted in the stream once the process has stopped.

- ``collector.opcda.values_per_s``: records written per second over the window (target >= 10,000);
- ``collector.opcda.rss_mb``: the collector's largest resident set size sampled in the window (target <= 80).

The simulator, the collector and this script share the machine's cores; run ``python bench/bench_collector_opcda.py``
to print the figures and the load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, report, write_config  # noqa: E402
from devkit.peers import free_port, port_open, start, wait_for  # noqa: E402

CONNECTIONS = 2  # sessions on the same gateway, each reading every item
WARMUP_S = 3.0
WINDOW_S = 8.0
STREAM = "factoryedge-opcda"


def _connections(port: int) -> list[dict[str, Any]]:
    return [{
        "name": f"da{c}", "host": "127.0.0.1", "port": port, "server": "FactoryEdge.TEP.1", "browse": ["*"],
        "scan_interval_s": 0.001, "timeout_s": 5, "tag_prefix": f"da{c}/", "deadband": {"heartbeat_s": 1e-6},
        "allow_plaintext": True,  # the simulator on 127.0.0.1 without TLS: what is measured is the collector
    } for c in range(CONNECTIONS)]


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-opcda-") as tmp:
        folder = Path(tmp)
        port = free_port()
        server = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcda",
                        "--opcda-port", str(port), "--speed", "1", "--status-every", "0"], folder / "sim.log")
        try:
            wait_for(lambda: port_open(port) or server.popen.poll() is not None, 60, "the simulator's OPC DA")
            config = write_config(folder, STREAM, _connections(port), log_level="ERROR")
            w = measure("components.opcda_collector.main", config, folder, STREAM, warmup_s=WARMUP_S,
                        window_s=WINDOW_S)
        finally:
            server.stop()
    return {"collector.opcda.values_per_s": w.values_per_s, "collector.opcda.rss_mb": w.rss_mb,
            "collector.opcda.cpu_percent": w.cpu_percent}


if __name__ == "__main__":
    report(run)
