"""The artifact's install.sh (tools/gg_install.sh) on the device: idempotent, offline from the zip's wheels.

The first test runs the script on a hand-made artifact with minimal wheels and locks; the slow one builds a
component with ``--offline-wheels`` (downloading the locked files from PyPI at build time) and installs from its zip
with no index at all. What the locks refuse (changed files, unhashed lines, unlocked dependencies):
tests/security/test_lock.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.gdk_build import PYTHON, ROOT, gdk_build, make_project, members, recipe_of, zip_of
from tests.support.wheels import lock_line, wheel

# isort: split
import gg_lock  # tools/ is on sys.path through tests.support.gdk_build


def test_install_script_is_idempotent_and_installs_offline(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "wheels").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "gg_install.sh", artifact / "install.sh")
    requirements = lock_line(wheel(artifact / "wheels", "fegtiny"), "fegtiny")
    (artifact / "requirements.txt").write_text(requirements)
    # The bootstrap lock is installed first; pip and setuptools themselves: the slow test (no index here).
    (artifact / "requirements-bootstrap.txt").write_text(lock_line(wheel(artifact / "wheels", "fegboot"), "fegboot"))
    (artifact / "wheels" / "PYTHON_VERSION").write_text(f"{PYTHON}\n")
    venv = tmp_path / "work" / "venv"
    env = {**os.environ, "FACTORYEDGE_PYTHON": sys.executable}

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(artifact / "install.sh"), str(venv)], capture_output=True, text=True, env=env, check=False
        )

    first = install()
    assert first.returncode == 0, first.stderr
    assert "creating venv" in first.stdout and "installed" in first.stdout
    value = subprocess.run([venv / "bin" / "python", "-c", "import fegtiny, fegboot; print(fegtiny.VALUE)"],
                           capture_output=True)
    assert value.stdout.strip() == b"42"
    second = install()  # what every nucleus restart does
    assert second.returncode == 0, second.stderr
    assert "nothing to install" in second.stdout and "creating venv" not in second.stdout

    (artifact / "requirements-bootstrap.txt").write_text(lock_line(artifact / "wheels" / "fegboot-1.0-py3-none-any.whl",
                                                                   "fegboot") + "# changed pins\n")
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
    # Exactly the locked files for the platform: the x86_64 ones of the component's lock and pip/setuptools.
    target = gg_lock.Target(PYTHON, "manylinux_2_28_x86_64")
    locked = gg_lock.for_target([*gg_lock.read(ROOT, "bootstrap"), *gg_lock.read(ROOT, name)], target)
    wheels = {f.removeprefix("wheels/") for f in files if f.startswith("wheels/")} - {"PYTHON_VERSION"}
    assert len(wheels) == len(locked)
    assert all(any(f in e.files for e in locked) for f in wheels), wheels
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
    check = ("import importlib.metadata as m, pymodbus, pydantic, yaml, cbor2, stream_manager, awsiot; "
             "print(m.version('pip'), m.version('setuptools'))")
    ran = subprocess.run([venv / "bin" / "python", "-c", check], capture_output=True, text=True, check=False)
    assert ran.stdout.split() == [r.split("==")[1] for r in gg_lock.BOOTSTRAP], ran.stderr


def test_an_unsupported_python_is_refused_naming_it_and_the_supported_range(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    shutil.copy(ROOT / "tools" / "gg_install.sh", artifact / "install.sh")
    for name in ("requirements.txt", "requirements-bootstrap.txt"):
        (artifact / name).write_text("")
    old = tmp_path / "python3.9"  # answers as Python 3.9 would to install.sh's version question
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    env = {**os.environ, "FACTORYEDGE_PYTHON": str(old)}
    result = subprocess.run(["sh", str(artifact / "install.sh"), str(tmp_path / "venv")], capture_output=True,
                            text=True, env=env, check=False)
    assert result.returncode == 1
    assert f"Python 3.9 ({old}) is not supported: this component installs on Python 3.10 to 3.13" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_install_script_supports_exactly_the_locked_pythons() -> None:
    script = (ROOT / "tools" / "gg_install.sh").read_text()
    assert f'supported="{" ".join(gg_lock.SUPPORTED_PYTHONS)}"' in script
    assert {t.python for t in gg_lock.TARGETS} == set(gg_lock.SUPPORTED_PYTHONS)
