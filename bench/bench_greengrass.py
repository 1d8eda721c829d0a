"""Greengrass packaging and local run figures.

- ``greengrass.build_s``: ``tools/gg_build.py`` for every component and the bundle, from a cold import-check cache
  (its own TMPDIR), as a fresh checkout or CI builds.
- ``greengrass.artifact_mb.<component>``: size of each artifact zip in MB (10^6 bytes), without offline wheels.
- ``greengrass.dev_run.start_s``: from starting ``gatewayctl dev run`` (OPC UA collector and publisher, against the
  simulator) to the first record in the publisher's file destination. Measured on a second start with the venvs
  already installed, as every nucleus start after the first deployment (Install is then a no-op); the first start
  additionally pays ``pip install`` into each venv, which depends on the network and pip's cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from devkit.peers import ROOT, free_port, port_open, start, wait_for

COMPONENTS = ("factoryedge.OpcUaCollector", "factoryedge.Publisher")


def _build(out: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-gg-tmp-") as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "tools/gg_build.py", "--output-dir", str(out)], cwd=ROOT, check=True,
                       capture_output=True, env={**os.environ, "TMPDIR": tmp})
        return time.perf_counter() - t0


def _dev_run(build: Path, folder: Path, opcua_port: int) -> float:
    out = folder / "records.jsonl"
    out.unlink(missing_ok=True)
    overrides = folder / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({
        "factoryedge.OpcUaCollector": {"connections": [{
            "name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}", "namespace_uri": "urn:factoryedge:tep",
            "nodes": ["s=Reactor/Pressure"], "publishing_interval_ms": 100, "flush_interval_s": 0.1}]},
        "factoryedge.Publisher": {"destinations": [{"type": "file", "name": "file", "path": str(out), "fsync": False,
                                                    "route": {"streams": ["factoryedge-opcua"]}}]},
    }))
    t0 = time.perf_counter()
    proc = start([sys.executable, "-m", "gateway.cli.main", "dev", "run", "--build", str(build), "--root",
                  str(folder / "root"), "--config", str(overrides), "--stream-manager-port", "0",
                  *(a for c in COMPONENTS for a in ("--component", c))],
                 folder / "devrun.log", env={"FACTORYEDGE_PYTHON": sys.executable, "PIP_NO_COMPILE": "1"})
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0, 600, "the first record at the file destination",
                 interval=0.01)
        return time.perf_counter() - t0
    finally:
        proc.stop(signal.SIGTERM, timeout=60)


def run() -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gg-") as tmp:
        folder = Path(tmp)
        build = folder / "greengrass-build"
        results["greengrass.build_s"] = round(_build(build), 3)
        for zip_path in sorted((build / "artifacts").rglob("*.zip")):
            results[f"greengrass.artifact_mb.{zip_path.stem}"] = round(zip_path.stat().st_size / 1e6, 3)
        port = free_port()
        sim = start([sys.executable, "-m", "simulator", "--plant", "synthetic", "--endpoints", "opcua",
                     "--opcua-port", str(port), "--speed", "10", "--status-every", "0"], folder / "simulator.log")
        try:
            wait_for(lambda: port_open(port), 60, "the simulator")
            _dev_run(build, folder, port)  # first start: installs the venvs
            results["greengrass.dev_run.start_s"] = round(_dev_run(build, folder, port), 3)
        finally:
            sim.stop()
    return results


if __name__ == "__main__":
    print(run())
