"""The artifact's install.sh (tools/gg_install.sh) on the device: idempotent, offline from the zip's wheels.

The first test runs the script on a hand-made artifact with a minimal wheel; the slow one builds a component with
``--offline-wheels`` (downloading from PyPI at build time) and installs from its zip with no index at all.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.gdk_build import PYTHON, ROOT, gdk_build, make_project, members, recipe_of, zip_of


def _tiny_wheel(directory: Path) -> None:
    """A real (minimal) wheel, so that install.sh's offline path runs pip for real without the network."""
    files = {
        "fegtiny/__init__.py": b"VALUE = 42\n",
        "fegtiny-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fegtiny\nVersion: 1.0\n",
        "fegtiny-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += "fegtiny-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(directory / "fegtiny-1.0-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr("fegtiny-1.0.dist-info/RECORD", record)


def test_install_script_is_idempotent_and_installs_offline(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "wheels").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "gg_install.sh", artifact / "install.sh")
    (artifact / "requirements.txt").write_text("fegtiny==1.0\n")
    (artifact / "wheels" / "PYTHON_VERSION").write_text(f"{PYTHON}\n")
    _tiny_wheel(artifact / "wheels")
    venv = tmp_path / "work" / "venv"
    env = {**os.environ, "FACTORYEDGE_PYTHON": sys.executable}

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(artifact / "install.sh"), str(venv)], capture_output=True, text=True, env=env, check=False
        )

    first = install()
    assert first.returncode == 0, first.stderr
    assert "creating venv" in first.stdout and "installed" in first.stdout
    value = subprocess.run([venv / "bin" / "python", "-c", "import fegtiny; print(fegtiny.VALUE)"], capture_output=True)
    assert value.stdout.strip() == b"42"
    second = install()  # what every nucleus restart does
    assert second.returncode == 0, second.stderr
    assert "nothing to install" in second.stdout and "creating venv" not in second.stdout

    (artifact / "requirements.txt").write_text("fegtiny==1.0\n# changed pins\n")
    (artifact / "wheels" / "PYTHON_VERSION").write_text("2.7\n")
    mismatch = install()
    assert mismatch.returncode == 1
    assert "wheels were built for Python 2.7" in mismatch.stderr


@pytest.mark.slow
def test_offline_wheels_install_without_an_index(tmp_path: Path) -> None:
    """Air-gapped path end to end: download wheels from PyPI at build time, then install with --no-index."""
    project = make_project(tmp_path / "project")
    name = "factoryedge.ModbusCollector"
    result = gdk_build(
        project, "--component", name, "--offline-wheels", "manylinux_2_28_x86_64", "--python-version", PYTHON
    )
    assert result.returncode == 0, result.stderr
    build = project / "greengrass-build"
    assert [m["Platform"]["architecture"] for m in recipe_of(build, name)["Manifests"]] == ["amd64"]
    files = members(build, name)
    assert any(f.startswith("wheels/pymodbus-") for f in files)
    unpacked = tmp_path / "decompressed" / name
    with zipfile.ZipFile(zip_of(build, name)) as archive:
        archive.extractall(unpacked)
    venv = tmp_path / "work" / "venv"
    # No index and no pip configuration (which may add find-links of this machine): only the zip's wheels/.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(FACTORYEDGE_PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/")
    install = subprocess.run(
        ["sh", str(unpacked / "install.sh"), str(venv)], capture_output=True, text=True, env=env, check=False
    )
    assert install.returncode == 0, install.stderr
    check = "import pymodbus, pydantic, yaml, cbor2, stream_manager, awsiot; print('ok')"
    ran = subprocess.run([venv / "bin" / "python", "-c", check], capture_output=True, text=True, check=False)
    assert ran.stdout.strip() == "ok", ran.stderr
