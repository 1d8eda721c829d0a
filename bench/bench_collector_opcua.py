"""OPC UA collector throughput, CPU and memory, against a bare asyncua client on the same server and data.

The independent node-opcua peer (tests/peers/opcua_server.js) changes ``VARIABLES`` doubles ``RATE`` times a second
(all of them at each tick, one source timestamp a tick). Clients take turns on it, interleaved in ``PAIRS`` rounds
(the order alternating, so that a drift of the machine's load falls on both), each measured over a fixed window after
a warm-up (each round runs the three once):

- ours: one collector process, the real component entry point (``python -m components.opcua_collector.main
  --config``), subscribed to all of them over ``CONNECTIONS`` sessions (one subscription each, NOTES 4); the records
  whose gateway timestamp falls in the window are counted in the stream once the process has stopped (so counting
  costs the collector nothing);
- bare: bench/opcua_bare.py, asyncua's own ``Subscription`` over the same sessions with the same subscription and
  monitored-item settings, whose datachange handler only counts.

Figures (medians over the rounds; CPU is the client process's user + system time over the window):

- ``collector.opcua.values_per_s``: records written per second over the window;
- ``collector.opcua.asyncua_values_per_s``: values the bare client received per second;
- ``collector.opcua.server_changes_per_s``: value changes the server made per second in our windows (its own
  count, read with SIGUSR2): what was on offer. ``RATE`` x ``VARIABLES`` is set above what node-opcua can make on
  this machine, so the server, not a client, is the limit (the count says how far it got);
- ``collector.opcua.cpu_us_per_value`` / ``collector.opcua.asyncua_cpu_us_per_value``: CPU time per value;
- ``collector.opcua.ratio_vs_asyncua``: per round, the bare client's CPU per value divided by ours (1.0: as cheap as
  asyncua alone), or, when our collector used a whole core (it then takes what it can, not what is offered), our
  throughput divided by the bare client's (issue 18); the median of the rounds;
- ``collector.opcua.asyncua_raw_*`` and ``collector.opcua.ratio_vs_asyncua_raw``: the same against the floor
  below asyncua's ``Subscription`` (``--mode raw``: a publish callback that counts, asyncua's publish loop and
  decoding alone; asyncua 2.1's ``Subscription`` runs a handler in a task per value, which costs about as much as all
  of our own work per value);
- ``collector.opcua.cpu_ratio_vs_asyncua`` and ``collector.opcua.cpu_ratio_vs_asyncua_raw``: the CPU per value
  ratios whether a core was saturated or not (then the ratios above are throughput ratios);
- ``collector.opcua.cpu_percent``: the collector's CPU time over the window, percent of one core;
- ``collector.opcua.rss_mb``: the collector's largest resident set size sampled in the window (target <= 80).

The server, the clients and this script share the machine's cores; run ``python bench/bench_collector_opcua.py``
to print the figures and the load (about 3 minutes).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_window import measure, proc_stat, report, write_config  # noqa: E402
from devkit.peers import Proc, free_port, start, wait_for  # noqa: E402

VARIABLES = 4000
RATE = 20.0  # changes per variable per second: 80,000 offered, more than node-opcua here makes (about 40,000)
CONNECTIONS = 2  # sessions; asyncua keeps one publish request in flight per session
PUBLISHING_INTERVAL_MS = 100
QUEUE_SIZE = 5
PAIRS = 3
WARMUP_S = 4.0
WINDOW_S = 8.0
SATURATED_PERCENT = 90.0  # a client at this share of one core takes what it can: compare throughputs instead
STREAM = "factoryedge-opcua"
URI = "urn:factoryedge:test"


class Server:
    """The node-opcua peer, with its change count read through SIGUSR2."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.proc: Proc = start(["node", str(ROOT / "tests" / "peers" / "opcua_server.js"), "--port", str(self.port),
                                 "--pki", str(folder / "pki"), "--variables", str(VARIABLES), "--rate", str(RATE)],
                                folder / "server.log")
        wait_for(lambda: "READY" in self.proc.output() or self.proc.popen.poll() is not None, 120, "node-opcua READY")
        assert self.proc.popen.poll() is None, self.proc.output()
        self.asked = 0

    def changes(self) -> int:
        """The server's count of value changes made so far."""
        self.asked += 1
        os.kill(self.proc.pid, signal.SIGUSR2)
        wait_for(lambda: len(re.findall(r"CHANGES (\d+)", self.proc.output())) >= self.asked, 10,
                 "the server's change count")
        return int(re.findall(r"CHANGES (\d+)", self.proc.output())[self.asked - 1])


def _connections(port: int) -> list[dict[str, Any]]:
    per = VARIABLES // CONNECTIONS
    return [{
        "name": f"ua{c}", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": URI,
        "nodes": [f"s=Bulk/V{i}" for i in range(c * per, (c + 1) * per)],
        "publishing_interval_ms": PUBLISHING_INTERVAL_MS, "queue_size": QUEUE_SIZE, "timeout_s": 20,
        "keepalive_s": 10, "watchdog_s": 60,
    } for c in range(CONNECTIONS)]


def ours(server: Server, folder: Path) -> dict[str, float]:
    """One window of the collector."""
    folder.mkdir()
    changes: list[int] = []
    w = measure("components.opcua_collector.main", write_config(folder, STREAM, _connections(server.port)), folder,
                STREAM, warmup_s=WARMUP_S, window_s=WINDOW_S, at_start=lambda: changes.append(server.changes()),
                at_end=lambda: changes.append(server.changes()))
    return {"values_per_s": w.values_per_s, "cpu_percent": w.cpu_percent, "rss_mb": w.rss_mb,
            "cpu_us": 1e4 * w.cpu_percent / w.values_per_s if w.values_per_s else float("inf"),
            "server_changes_per_s": (changes[1] - changes[0]) / w.seconds}


def bare(server: Server, folder: Path, mode: str = "handler") -> dict[str, float]:
    """One window of the bare asyncua client (``mode``: see bench/opcua_bare.py)."""
    folder.mkdir()
    proc = start([sys.executable, str(ROOT / "bench" / "opcua_bare.py"), "--mode", mode, "--endpoint",
                  f"opc.tcp://127.0.0.1:{server.port}", "--namespace-uri", URI, "--variables", str(VARIABLES),
                  "--connections", str(CONNECTIONS), "--publishing-interval-ms", str(PUBLISHING_INTERVAL_MS),
                  "--queue-size", str(QUEUE_SIZE)], folder / "bare.log")

    def count(n: int) -> tuple[int, int]:
        os.kill(proc.pid, signal.SIGUSR2)
        found = wait_for(lambda: re.findall(r"COUNT (\d+) (\d+)", proc.output())[n - 1:], 10, "the bare count")
        return int(found[0][0]), int(found[0][1])

    try:
        wait_for(lambda: "READY" in proc.output() or proc.popen.poll() is not None, 60, "the bare client")
        assert proc.popen.poll() is None, proc.output()
        time.sleep(WARMUP_S)  # a benchmark window, not synchronisation
        n0, t0 = count(1)
        cpu0, _ = proc_stat(proc.pid)
        time.sleep(WINDOW_S)
        cpu1, _ = proc_stat(proc.pid)
        n1, t1 = count(2)
    finally:
        proc.stop()
    seconds = (t1 - t0) / 1e9
    return {"values_per_s": (n1 - n0) / seconds, "cpu_percent": 100 * (cpu1 - cpu0) / seconds,
            "cpu_us": 1e6 * (cpu1 - cpu0) / (n1 - n0) if n1 > n0 else float("inf")}


def ratio(o: dict[str, float], b: dict[str, float]) -> float:
    """The issue's ratio for one round: CPU per value, bare / ours; throughput, ours / bare, once ours saturates."""
    if o["cpu_percent"] >= SATURATED_PERCENT:
        return o["values_per_s"] / b["values_per_s"]
    return b["cpu_us"] / o["cpu_us"]


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        folder = Path(tmp)
        server = Server(folder)
        pairs: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
        try:
            for i in range(PAIRS):
                if i % 2:
                    b = bare(server, folder / f"bare{i}")
                    r = bare(server, folder / f"raw{i}", "raw")
                    o = ours(server, folder / f"ours{i}")
                else:
                    o = ours(server, folder / f"ours{i}")
                    r = bare(server, folder / f"raw{i}", "raw")
                    b = bare(server, folder / f"bare{i}")
                pairs.append((o, b, r))
                print(f"round {i + 1}: ours {o['values_per_s']:.0f}/s {o['cpu_us']:.1f} us {o['cpu_percent']:.0f} % "
                      f"(server {o['server_changes_per_s']:.0f}/s); asyncua {b['values_per_s']:.0f}/s "
                      f"{b['cpu_us']:.1f} us {b['cpu_percent']:.0f} %; raw {r['values_per_s']:.0f}/s "
                      f"{r['cpu_us']:.1f} us {r['cpu_percent']:.0f} %; load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr)
        finally:
            server.proc.stop()

    def med(side: int, key: str) -> float:
        return statistics.median(p[side][key] for p in pairs)

    def cpu_ratio(side: int) -> float:
        return statistics.median(p[side]["cpu_us"] / p[0]["cpu_us"] for p in pairs)

    figures = {"collector.opcua.values_per_s": med(0, "values_per_s"),
               "collector.opcua.server_changes_per_s": med(0, "server_changes_per_s"),
               "collector.opcua.cpu_percent": med(0, "cpu_percent"),
               "collector.opcua.rss_mb": med(0, "rss_mb"),
               "collector.opcua.cpu_us_per_value": med(0, "cpu_us"),
               "collector.opcua.asyncua_values_per_s": med(1, "values_per_s"),
               "collector.opcua.asyncua_cpu_percent": med(1, "cpu_percent"),
               "collector.opcua.asyncua_cpu_us_per_value": med(1, "cpu_us"),
               "collector.opcua.ratio_vs_asyncua": statistics.median(ratio(o, b) for o, b, _ in pairs),
               "collector.opcua.cpu_ratio_vs_asyncua": cpu_ratio(1),
               "collector.opcua.asyncua_raw_values_per_s": med(2, "values_per_s"),
               "collector.opcua.asyncua_raw_cpu_us_per_value": med(2, "cpu_us"),
               "collector.opcua.ratio_vs_asyncua_raw": statistics.median(ratio(o, r) for o, _, r in pairs),
               "collector.opcua.cpu_ratio_vs_asyncua_raw": cpu_ratio(2)}
    print(", ".join(f"{k.removeprefix('collector.opcua.')} {v:.2f}" for k, v in figures.items() if "ratio" in k),
          file=sys.stderr)  # report() prints one decimal
    return figures


if __name__ == "__main__":
    report(run)
