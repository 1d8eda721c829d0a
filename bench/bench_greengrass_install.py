"""Device install figures, from the built zips (tools/gg_build.py), as the nucleus runs each component's Install.

- ``greengrass.install_s.<component>``: ``install.sh`` from the unpacked zip into an empty venv with pip's cache
  warm (each component is installed once before, untimed), as a redeployment or a second device with the same
  cache; ``greengrass.install_s`` is the largest of them.
- ``greengrass.device_disk_mb``: what the whole bundle occupies on a device: every unpacked artifact and every
  component venv (MB, 10^6 bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from devkit.peers import ROOT


def _disk_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _install(unpacked: Path, venv: Path) -> float:
    env = {**os.environ, "FACTORYEDGE_PYTHON": getattr(sys, "_base_executable", sys.executable),
           "PIP_NO_COMPILE": "1"}
    t0 = time.perf_counter()
    subprocess.run(["sh", str(unpacked / "install.sh"), str(venv)], check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def run() -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gg-install-") as tmp:
        folder = Path(tmp)
        build = folder / "greengrass-build"
        subprocess.run([sys.executable, "tools/gg_build.py", "--output-dir", str(build)], cwd=ROOT, check=True,
                       capture_output=True)
        disk = 0
        for zip_path in sorted((build / "artifacts").rglob("*.zip")):
            name = zip_path.stem
            unpacked = folder / "artifacts" / name
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(unpacked)
            _install(unpacked, folder / "warm" / name)  # fills pip's cache with this component's files
            results[f"greengrass.install_s.{name}"] = round(_install(unpacked, folder / "work" / name / "venv"), 3)
            disk += _disk_bytes(unpacked) + _disk_bytes(folder / "work" / name)
        results["greengrass.install_s"] = max(v for k, v in results.items() if k.startswith("greengrass.install_s."))
        results["greengrass.device_disk_mb"] = round(disk / 1e6, 1)
    return results


if __name__ == "__main__":
    print(run())
