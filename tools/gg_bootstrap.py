"""The build's own interpreter: a venv holding exactly the locked distributions, made by the build itself.

``gdk component build`` runs ``python3 tools/gg_build.py`` with whatever ``python3`` is on PATH, on a machine that
may have nothing but Python and GDK. The build needs PyYAML and pydantic (recipes, default configuration) and,
to prove each entry point imports from its zip, every library the components ship. So before anything else the
build makes ``.build-venv`` (or ``$FACTORYEDGE_BUILD_VENV``) and runs itself again with its python:

- it installs ``locks/bootstrap.txt`` and then the union of the component locks, exactly as a device installs
  them (``--require-hashes --no-deps``; markers choose this machine's files), so the build imports the same bits a
  device runs, whatever this machine's own site-packages hold;
- it does so once: a stamp (the locks' hash and the interpreter) makes later builds start at once, and a change of
  a lock or of ``python3`` rebuilds it. A file lock serialises builds that share the venv;
- from ``$FACTORYEDGE_WHEELS`` (a folder of the locked files, no index: air-gapped build hosts, the tests) or from
  ``$PIP_INDEX_URL`` / PyPI, with none of this machine's pip configuration (its find-links may hold other builds).

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gg_artifact as art
import gg_lock as lk

VENV_ENV = "FACTORYEDGE_BUILD_VENV"
WHEELS_ENV = "FACTORYEDGE_WHEELS"
GUARD = "GG_BUILD_REEXECUTED"
STAMP = ".factoryedge-build.sha256"


class SetupError(Exception):
    """The build's interpreter cannot be made; the message names what is missing and the fix."""


def venv_path(project: Path) -> Path:
    return Path(os.environ.get(VENV_ENV) or project / ".build-venv")


def check_python(version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)) -> None:
    """The locks hold files for the supported Pythons only; any other cannot install them."""
    found = f"{version[0]}.{version[1]}"
    if found not in lk.SUPPORTED_PYTHONS:
        raise SetupError(
            f"Python {found} ({sys.executable}) cannot run the build: the locks in locks/ hold files for Python "
            f"{lk.SUPPORTED_PYTHONS[0]} to {lk.SUPPORTED_PYTHONS[-1]} only; put one of those first on PATH as python3"
        )


def requirements(project: Path) -> str:
    """Every component lock merged into one hash-checked requirements file (a version's files and targets joined)."""
    merged: dict[tuple[str, str], lk.Entry] = {}
    markers: dict[tuple[str, str], list[str | None]] = {}
    for name in art.component_names():
        for entry in lk.read(project, name):
            key = (entry.key, entry.version)
            if key not in merged:
                merged[key] = lk.Entry(entry.name, entry.version, None, [], [])
                markers[key] = []
            for digest, file in zip(entry.hashes, entry.files or [""] * len(entry.hashes), strict=True):
                if digest not in merged[key].hashes:
                    merged[key].hashes.append(digest)
                    merged[key].files.append(file)
            markers[key].append(entry.marker)
    for key, entry in merged.items():
        found = markers[key]
        entry.marker = None if None in found else " or ".join(f"({m})" for m in dict.fromkeys(found))
    # Devices give each component its own venv, so two locks may hold an indirect dependency at different versions
    # (python-dateutil: botocore's bound vs asyncua's). One venv takes the version most locks hold: the build only
    # imports entry points to see which libraries they need, which does not depend on such a version.
    kept: list[lk.Entry] = []
    for dist in sorted({k for k, _ in merged}):
        versions = [merged[k] for k in merged if k[0] == dist]
        if len(versions) > 1 and any(e.marker is None for e in versions):
            versions = [max(versions, key=lambda e: (len(markers[(e.key, e.version)]), e.version))]
        kept.extend(versions)
    return "".join(e.render() for e in kept)


def _pip(python: Path, *args: str) -> None:
    wheels = os.environ.get(WHEELS_ENV)
    source = ["--no-index", "--find-links", wheels] if wheels else ["--index-url", lk.index_url()]
    result = subprocess.run(
        [str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
         "--require-hashes", "--no-deps", *source, *args],
        capture_output=True, text=True, check=False, env=lk.pip_env(),
    )
    if result.returncode != 0:
        where = f"the folder {wheels} (${WHEELS_ENV})" if wheels else lk.index_url()
        raise SetupError(
            f"installing the locked build requirements from {where} failed (the locks cover Linux x86_64/aarch64 "
            f"with Python {lk.SUPPORTED_PYTHONS[0]}-{lk.SUPPORTED_PYTHONS[-1]}; without network, point "
            f"${WHEELS_ENV} at a folder of the locked files):\n{result.stderr.strip()[-3000:]}"
        )


def prepare(project: Path, venv: Path) -> Path:
    """Make ``venv`` hold exactly the locks (once per lock change); return its python."""
    check_python()
    wanted = requirements(project)
    bootstrap = lk.lock_path(project, "bootstrap").read_text()
    interpreter = f"{os.path.realpath(sys.executable)} {sys.version}"
    digest = hashlib.sha256(f"{interpreter}\n{bootstrap}\n{wanted}".encode()).hexdigest()
    real = venv.resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    python = real / "bin" / "python"
    with open(real.parent / f"{real.name}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another build sharing this venv finishes installing first
        stamp = real / STAMP
        if stamp.is_file() and stamp.read_text().strip() == digest and python.exists():
            return python
        print(f"gg_build: preparing {venv} with the locked build requirements (first build, or a lock or python3 "
              "changed)", file=sys.stderr, flush=True)
        shutil.rmtree(real, ignore_errors=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(real)], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise SetupError(f"'{sys.executable} -m venv' failed: install the venv module (Debian/Ubuntu: "
                             f"apt install python3-venv):\n{made.stderr.strip()[-1000:]}")
        _pip(python, "-r", str(lk.lock_path(project, "bootstrap")))
        (real / "requirements.txt").write_text(wanted)
        # setuptools from the bootstrap lock builds the two sdist-only pins; nothing unhashed is fetched
        _pip(python, "--no-build-isolation", "-r", str(real / "requirements.txt"))
        stamp.write_text(digest + "\n")
    return python


def ensure(project: Path, script: Path, argv: list[str]) -> None:
    """Return when this interpreter is the build venv's; otherwise prepare it and run ``script`` there."""
    venv = venv_path(project)
    if os.environ.get(GUARD) or Path(sys.prefix).resolve() == venv.resolve():
        return
    try:
        python = prepare(project, venv)
    except (SetupError, lk.LockError, art.BuildError, OSError) as exc:
        print(f"gg_build: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    os.environ[GUARD] = "1"
    os.execv(str(python), [str(python), str(script), *argv])
