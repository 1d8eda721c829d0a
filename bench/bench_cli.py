"""gatewayctl response time on a running local gateway (targets: each <= 2 s).

``run()`` starts the simulator (synthetic plant, OPC UA), the OPC UA collector and the publisher writing to a JSON
lines file, each its own process sharing one embedded store, waits until records reach the file, then times
``gatewayctl doctor`` and ``gatewayctl status`` as the engineer runs them: a fresh ``python -m gateway.cli.main``
process each time (interpreter start, imports, configuration discovery through the components' pids, every check,
output). The figure is the median of ``RUNS`` runs, wall clock:

- ``cli.doctor_s``: ``gatewayctl --store DIR doctor`` (every check, the OPC UA module's live probe included);
- ``cli.status_s``: ``gatewayctl --store DIR status`` (one screen).

Run alone: ``python -m bench.bench_cli`` (prints the figures and the load average).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.peers import Proc, free_port, port_open, start, wait_for  # noqa: E402

RUNS = 5
TAGS = ["Reactor/Pressure", "Reactor/Temperature", "Stripper/Level", "Separator/Level"]


def _component(name: str, cfg: dict[str, object], folder: Path) -> Proc:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return start([sys.executable, f"components/{name}/main.py", "--config", str(path)], folder / f"{name}.log",
                 env={"PYTHONPATH": str(ROOT)})


def _time(args: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"gatewayctl {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return elapsed


def run() -> dict[str, float]:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        folder = Path(tmp)
        store = folder / "data"
        try:
            port = free_port()
            procs.append(start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcua",
                                "--opcua-port", str(port), "--speed", "1", "--status-every", "0"],
                               folder / "simulator.log"))
            wait_for(lambda: port_open(port), 60, "the simulator's OPC UA endpoint")
            common = {"store": {"kind": "embedded", "path": str(store)}, "status_interval_s": 1.0}
            procs.append(_component("opcua_collector", {**common, "connections": [
                {"name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": "urn:factoryedge:tep",
                 "nodes": [f"s={t}" for t in TAGS], "publishing_interval_ms": 500}]}, folder))
            procs.append(_component("publisher", {**common, "metrics_interval_s": 3600, "destinations": [
                {"type": "file", "name": "file", "path": str(folder / "out.jsonl"),
                 "route": {"streams": ["factoryedge-opcua"]}}]}, folder))
            wait_for(lambda: (folder / "out.jsonl").exists() and (folder / "out.jsonl").stat().st_size > 0, 60,
                     "records in the output file")
            _time(["--store", str(store), "status"])  # warm the page cache like a second run on site would
            doctor = [_time(["--store", str(store), "doctor"]) for _ in range(RUNS)]
            status = [_time(["--store", str(store), "status"]) for _ in range(RUNS)]
        finally:
            for p in reversed(procs):
                p.stop()
    return {"cli.doctor_s": round(statistics.median(doctor), 3), "cli.status_s": round(statistics.median(status), 3)}


if __name__ == "__main__":
    figures = run()
    for key, value in figures.items():
        print(f"{key} = {value}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
