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
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.dev.peers import Proc, free_port, start, wait_for  # noqa: E402
from gateway.streams import PositionStore, RecordReader  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402

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


def _config(folder: Path, port: int) -> Path:
    per = VARIABLES // CONNECTIONS
    connections = [{
        "name": f"ua{c}", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": URI,
        "nodes": [f"s=Bulk/V{i}" for i in range(c * per, (c + 1) * per)],
        "publishing_interval_ms": 100, "queue_size": 5, "timeout_s": 20, "keepalive_s": 10, "watchdog_s": 60,
    } for c in range(CONNECTIONS)]
    cfg = {"store": {"kind": "embedded", "path": str(folder / "store")}, "log_level": "WARNING",
           "stream": {"name": STREAM, "max_size_bytes": 2 * 1024**3}, "connections": connections}
    path = folder / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1024**2
    return cpu, rss


def _changes(server: Proc, n: int) -> int:
    """Ask the server for its change count (its n-th answer)."""
    os.kill(server.pid, signal.SIGUSR2)
    wait_for(lambda: len(re.findall(r"CHANGES (\d+)", server.output())) >= n, 10, "the server's change count")
    return int(re.findall(r"CHANGES (\d+)", server.output())[n - 1])


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        folder = Path(tmp)
        server, port = _server(folder)
        collector = start([sys.executable, "-m", "components.opcua_collector.main", "--config",
                           str(_config(folder, port))], folder / "collector.log")
        try:
            store_dir = folder / "store"
            wait_for(lambda: (store_dir / "status").exists(), 60, "the collector to start")
            time.sleep(WARMUP_S)  # a benchmark window, not synchronisation
            c0 = _changes(server, 1)
            cpu0, rss = _proc_stat(collector.pid)
            t0 = time.time_ns()
            while time.time_ns() - t0 < WINDOW_S * 1e9:
                time.sleep(0.5)
                rss = max(rss, _proc_stat(collector.pid)[1])
            t1 = time.time_ns()
            cpu1, _ = _proc_stat(collector.pid)
            c1 = _changes(server, 2)
        finally:
            code = collector.stop()
            server.stop()
        assert code == 0, f"collector exit code {code}: {collector.output()[-2000:]}"
        reader = RecordReader(EmbeddedStore(store_dir), STREAM, "bench", PositionStore(folder / "pos"))
        counted = 0
        while True:
            batch = reader.poll(max_messages=1000, timeout_s=0)
            if not batch.messages:
                break
            counted += sum(t0 <= r.gateway_ts_ns < t1 for r in batch.records)
            reader.position = batch.next_seq
    window = (t1 - t0) / 1e9
    return {"collector.opcua.values_per_s": counted / window,
            "collector.opcua.server_changes_per_s": (c1 - c0) / window,
            "collector.opcua.cpu_percent": 100 * (cpu1 - cpu0) / window,
            "collector.opcua.rss_mb": rss}


if __name__ == "__main__":
    load = os.getloadavg()
    for key, value in run().items():
        print(f"{key} = {value:.1f}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
