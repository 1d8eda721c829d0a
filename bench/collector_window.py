"""What the three collector benchmarks share: run the real component, measure a window, count what it wrote.

The component runs as a subprocess from its entry point with a configuration file (as on a gateway). After a
warm-up, a fixed window is measured: the process's CPU time and largest resident set, and afterwards, once the
process has stopped (so counting costs it nothing), the records in its stream whose gateway timestamp falls inside
the window.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.peers import Proc, free_port, port_open, start, wait_for  # noqa: E402
from gateway.streams import PositionStore, RecordReader  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402


@dataclass(frozen=True)
class Window:
    values_per_s: float
    cpu_percent: float
    rss_mb: float
    seconds: float


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1024**2
    return cpu, rss


def modbus_server(folder: Path, tags: int) -> tuple[Proc, int]:
    """The libmodbus test server (tests/peers/modbus_server.c, built here) on 127.0.0.1 holding ``tags`` float32
    values 100.0, 101.0, ... from address 0, run with ``-m`` so every read changes them (the deadband passes all)."""
    binary = folder / "modbus_server"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], check=True, capture_output=True,
                           text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "tests" / "peers" / "modbus_server.c"), *flags],
                   check=True)
    regs: list[int] = []
    for i in range(tags):
        regs += struct.unpack(">HH", struct.pack(">f", 100.0 + i))
    (folder / "tables.txt").write_text(f"unit 1\nsize hr {len(regs)}\nhr 0 {' '.join(map(str, regs))}\n")
    port = free_port()
    proc = start([str(binary), str(port), str(folder / "tables.txt"), "-m"], folder / "server.log")
    wait_for(lambda: port_open(port), 10, "the libmodbus server")
    return proc, port


def write_config(folder: Path, stream: str, connections: list[dict[str, Any]], log_level: str = "WARNING") -> Path:
    cfg = {"store": {"kind": "embedded", "path": str(folder / "store")}, "log_level": log_level,
           "stream": {"name": stream, "max_size_bytes": 2 * 1024**3}, "connections": connections}
    path = folder / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(module: str, config: Path, folder: Path, stream: str, *, warmup_s: float, window_s: float,
            at_start: Callable[[], None] | None = None, at_end: Callable[[], None] | None = None) -> Window:
    """Run ``python -m module --config config`` and measure one window; ``at_start``/``at_end`` run at its edges."""
    store_dir = folder / "store"
    collector = start([sys.executable, "-m", module, "--config", str(config)], folder / "collector.log")
    try:
        wait_for(lambda: (store_dir / "status").exists() or collector.popen.poll() is not None, 60,
                 "the collector to start")
        time.sleep(warmup_s)  # a benchmark window, not synchronisation
        if at_start:
            at_start()
        cpu0, rss = proc_stat(collector.pid)
        t0 = time.time_ns()
        while time.time_ns() - t0 < window_s * 1e9:
            time.sleep(0.5)
            rss = max(rss, proc_stat(collector.pid)[1])
        t1 = time.time_ns()
        cpu1, _ = proc_stat(collector.pid)
        if at_end:
            at_end()
    finally:
        code = collector.stop()
    assert code == 0, f"collector exit code {code}: {collector.output()[-2000:]}"
    reader = RecordReader(EmbeddedStore(store_dir), stream, "bench", PositionStore(folder / "pos"))
    counted = 0
    while True:
        batch = reader.poll(max_messages=1000, timeout_s=0)
        if not batch.messages:
            break
        counted += sum(t0 <= r.gateway_ts_ns < t1 for r in batch.records)
        reader.position = batch.next_seq
    seconds = (t1 - t0) / 1e9
    return Window(counted / seconds, 100 * (cpu1 - cpu0) / seconds, rss, seconds)


def report(run: Callable[[], dict[str, float]]) -> None:
    """``python bench/bench_collector_X.py``: print the figures and the load around them."""
    load = os.getloadavg()
    for key, value in run().items():
        print(f"{key} = {value:.1f}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
