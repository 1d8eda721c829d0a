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

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.dev.peers import free_port, port_open, start, wait_for  # noqa: E402
from gateway.streams import PositionStore, RecordReader  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402

CONNECTIONS = 2  # sessions on the same gateway, each reading every item
WARMUP_S = 3.0
WINDOW_S = 8.0
STREAM = "factoryedge-opcda"


def _config(folder: Path, port: int) -> Path:
    connections = [{
        "name": f"da{c}", "host": "127.0.0.1", "port": port, "server": "FactoryEdge.TEP.1", "browse": ["*"],
        "scan_interval_s": 0.001, "timeout_s": 5, "tag_prefix": f"da{c}/", "deadband": {"heartbeat_s": 1e-6},
    } for c in range(CONNECTIONS)]
    cfg = {"store": {"kind": "embedded", "path": str(folder / "store")}, "log_level": "ERROR",
           "stream": {"name": STREAM, "max_size_bytes": 2 * 1024**3}, "connections": connections}
    path = folder / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-opcda-") as tmp:
        folder = Path(tmp)
        port = free_port()
        server = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcda",
                        "--opcda-port", str(port), "--speed", "1", "--status-every", "0"], folder / "sim.log")
        wait_for(lambda: port_open(port) or server.popen.poll() is not None, 60, "the simulator's OPC DA endpoint")
        collector = start([sys.executable, "-m", "components.opcda_collector.main", "--config",
                           str(_config(folder, port))], folder / "collector.log")
        try:
            store_dir = folder / "store"
            wait_for(lambda: (store_dir / "status").exists(), 30, "the collector to start")
            time.sleep(WARMUP_S)  # a benchmark window, not synchronisation
            t0 = time.time_ns()
            rss = 0.0
            while time.time_ns() - t0 < WINDOW_S * 1e9:
                time.sleep(0.5)
                rss = max(rss, _rss_mb(collector.pid))
            t1 = time.time_ns()
        finally:
            code = collector.stop()
            server.stop()
        assert code == 0, collector.output()[-2000:]
        reader = RecordReader(EmbeddedStore(store_dir), STREAM, "bench", PositionStore(folder / "pos"))
        counted = 0
        while True:
            batch = reader.poll(max_messages=1000, timeout_s=0)
            if not batch.messages:
                break
            counted += sum(t0 <= r.gateway_ts_ns < t1 for r in batch.records)
            reader.position = batch.next_seq
    return {"collector.opcda.values_per_s": counted / ((t1 - t0) / 1e9), "collector.opcda.rss_mb": rss}


if __name__ == "__main__":
    load = os.getloadavg()
    for key, value in run().items():
        print(f"{key} = {value:.1f}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
