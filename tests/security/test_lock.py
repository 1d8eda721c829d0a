"""Supply chain: devices install exactly the locked files (locks/, written by tools/lock.py), nothing floats.

The lock checks read the committed locks and this venv's installed metadata, with no network: the top-level pins
are pyproject's, the lock is closed under every locked distribution's requirements on every target, holds nothing
more, and has a file for every target. The install tests run the artifact's install.sh on hand-made wheels with no
index: a changed file, an unhashed line or a dependency left out of the lock fails the install.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, parse_tag
from packaging.utils import parse_wheel_filename

from tests.support.gdk_build import PYTHON, ROOT, gdk_build, make_project
from tests.support.wheels import lock_line, wheel

# isort: split
import gg_artifact as art  # tools/ is on sys.path through tests.support.gdk_build
import gg_lock as lk

PINS = art.project_pins((ROOT / "pyproject.toml").read_text())
LOCKS = [*art.component_names(), "bootstrap"]
THIS = lk.Target(PYTHON, "manylinux_2_28_x86_64")  # this venv's Python: whose installed metadata closure() reads


def _pins(name: str) -> list[str]:
    """The lock's top-level pin lines (``Name==version[ ; marker]``)."""
    return list(lk.BOOTSTRAP) if name == "bootstrap" else art.requirements_for(name, PINS)


def _top_level(name: str, target: lk.Target | None = None) -> set[str]:
    """Keys of the top-level pins (those whose marker selects ``target``, when given)."""
    return {e.key for e in map(lk.requirement, _pins(name)) if target is None or e.applies_to(target)}


def closure(entries: list[lk.Entry], target: lk.Target, roots: set[str]) -> tuple[set[str], list[str], set[str]]:
    """Walk the requirements of the locked distributions from ``roots`` as pip would on ``target``.

    Requirements come from this venv's installed metadata, so only where the installed version is the locked one
    (always for the pins): an indirect dependency may have had a release since `make setup` installed this venv
    (python-dateutil 4 dropped six), and another version's requirements say nothing about the locked one. Those
    are returned as unverified, not walked. Returns the keys reached, one line per requirement the lock does not
    satisfy, and the unverified keys.
    """
    locked = {e.key: e for e in lk.for_target(entries, target)}
    problems: list[str] = []
    unverified: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [(key, frozenset[str]()) for key in roots]
    while queue:
        key, extras = queue.pop()
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        if key not in locked:
            problems.append(f"{key}: pinned but not locked for {target}")
            continue
        entry = locked[key]
        try:
            dist = importlib.metadata.distribution(entry.name)
        except importlib.metadata.PackageNotFoundError:
            if target.python != PYTHON:  # needed only on another Python (exceptiongroup on 3.10): not here
                unverified.add(key)
            else:
                problems.append(f"{entry.name}: not installed here, cannot read its requirements (run make setup)")
            continue
        if dist.version != entry.version:
            unverified.add(key)
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{**target.environment(), "extra": extra} for extra in ("", *sorted(extras))]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            dep = lk.normalize(req.name)
            if dep not in locked:
                problems.append(f"{entry.name} {entry.version} requires {req}: not in the lock for {target}")
            elif not req.specifier.contains(locked[dep].version, prereleases=True):
                problems.append(f"{entry.name} {entry.version} requires {req}: the lock has {locked[dep].version}")
            else:
                queue.append((dep, frozenset(req.extras)))
    return {key for key, _ in seen}, problems, unverified


def _supported(target: lk.Target) -> set[Tag]:
    platforms = [a for a in lk.platform_args(target)[:-4] if a != "--platform"]
    version = tuple(int(p) for p in target.python.split("."))
    return {*cpython_tags(version, platforms=platforms), *compatible_tags(version, platforms=platforms)}


@pytest.mark.parametrize("name", LOCKS)
def test_lock_holds_every_pin_at_the_pyproject_version(name: str) -> None:
    entries = lk.read(ROOT, name)
    assert lk.drift(entries, _pins(name), name) == []


@pytest.mark.parametrize("target", lk.TARGETS, ids=str)
def test_each_target_installs_the_pin_its_marker_selects(target: lk.Target) -> None:
    """numpy 2.3+ has no wheels for 3.10: pyproject pins 2.2.x there by marker, and the lock follows it."""
    entries = lk.for_target(lk.read(ROOT, "factoryedge.AnomalyDetector"), target)
    (pin,) = [p for p in map(lk.requirement, PINS["numpy"]) if p.applies_to(target)]
    assert [e.version for e in entries if e.key == "numpy"] == [pin.version]
    assert ("2.2." in pin.version) == (target.python == "3.10")


def test_a_pin_changed_without_regenerating_is_drift() -> None:
    entries = lk.read(ROOT, "factoryedge.Publisher")
    pins = [p for p in _pins("factoryedge.Publisher") if not p.startswith("boto3==")]
    pins += ["boto3==0.0.1", "newlib==1.0"]
    problems = lk.drift(entries, pins, "locks/factoryedge.Publisher.txt")
    assert len(problems) == 2
    assert "boto3==0.0.1 is pinned in pyproject.toml but the lock locks " in problems[0]
    assert "newlib==1.0" in problems[1] and "does not lock it" in problems[1]
    assert all("python tools/lock.py" in p for p in problems)


@pytest.mark.parametrize("target", lk.TARGETS, ids=str)
@pytest.mark.parametrize("name", art.component_names())  # bootstrap: pip and setuptools require nothing
def test_lock_is_exactly_the_closure_of_the_pins(name: str, target: lk.Target) -> None:
    entries = lk.read(ROOT, name)
    roots = _top_level(name, target)
    reached, problems, unverified = closure(entries, target, roots)
    assert problems == []
    # A pin with a marker may choose another version for this target than the one this venv runs (numpy on 3.10).
    other = {e.key for e in map(lk.requirement, _pins(name)) if e.marker and not e.applies_to(THIS)}
    assert not unverified & (roots - other), "a pin is installed here at another version: run make setup"
    if not unverified:  # else what only an unverified entry needs cannot be told from what nothing needs
        assert {e.key for e in lk.for_target(entries, target)} - reached == set(), "locked but needed by nothing"


def test_a_dependency_left_out_of_the_lock_is_found() -> None:
    entries = [e for e in lk.read(ROOT, "factoryedge.Publisher") if e.key != "jmespath"]
    _, problems, _ = closure(entries, lk.TARGETS[0], _top_level("factoryedge.Publisher"))
    assert any(p.startswith("boto3 ") and "jmespath" in p and "not in the lock" in p for p in problems), problems


@pytest.mark.parametrize("name", LOCKS)
def test_every_entry_has_a_hashed_file_for_every_target_and_an_sdist_only_without_wheels(name: str) -> None:
    entries = lk.read(ROOT, name)
    assert entries
    for entry in entries:
        assert len(entry.hashes) == len(entry.files) == len(set(entry.hashes)), entry
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in entry.hashes), entry
    for target in lk.TARGETS:
        supported = _supported(target)
        for entry in lk.for_target(entries, target):
            wheels = [f for f in entry.files if f.endswith(".whl")]
            fits = [f for f in wheels if parse_wheel_filename(f)[3] & supported]
            sdists = [f for f in entry.files if f.endswith((".tar.gz", ".zip"))]
            assert fits or sdists, f"{entry.name}: no file for {target}"
            assert not (fits and sdists), f"{entry.name}: sdist locked although a wheel fits {target}"
            assert all(parse_wheel_filename(f)[3] & set().union(*map(_supported, lk.TARGETS)) for f in wheels)
            assert all(parse_tag(str(t)) for f in fits for t in parse_wheel_filename(f)[3])


def test_a_hand_edited_unhashed_line_is_refused() -> None:
    text = (ROOT / "locks" / "bootstrap.txt").read_text() + "requests==2.0.0\n"
    with pytest.raises(lk.LockError, match=r"line \d+: 'requests==2.0.0' is not .*python tools/lock.py"):
        lk.parse(text, "locks/bootstrap.txt")


@pytest.mark.slow  # needs the package index (PIP_INDEX_URL or PyPI); metadata only, no wheel is downloaded
@pytest.mark.index  # ~3.5 min for 8 targets: run by `make check` (CI runs both), not `make test`
@pytest.mark.parametrize("target", lk.TARGETS, ids=str)
def test_every_lock_resolves_from_the_index_for_every_target(target: lk.Target, tmp_path: Path) -> None:
    """What pip does on such a device, with its --python-version and --platform: exactly the locked files (by the
    index's sha256) and nothing else; a pin without a file for the target (numpy 2.4 on 3.10) fails here."""
    for name in LOCKS:
        chosen = lk.for_target(lk.read(ROOT, name), target)
        requirements = tmp_path / f"{name}.txt"
        requirements.write_text("".join(lk.Entry(e.name, e.version, None, e.hashes, e.files).render() for e in chosen))
        report = tmp_path / f"{name}.json"
        result = lk.pip("install", "--dry-run", "--ignore-installed", "--target", str(tmp_path / "t"), "--quiet",
                        "--require-hashes", "--no-deps", "--only-binary=:all:", "--index-url", lk.index_url(),
                        "--report", str(report), *lk.platform_args(target), "-r", str(requirements))
        sdist_only = [e for e in chosen if not any(f.endswith(".whl") for f in e.files)]
        if sdist_only and result.returncode != 0:  # rrcf, OpenOPC: built on the device; check the rest alone
            requirements.write_text("".join(lk.Entry(e.name, e.version, None, e.hashes, e.files).render()
                                            for e in chosen if e not in sdist_only))
            result = lk.pip("install", "--dry-run", "--ignore-installed", "--target", str(tmp_path / "t"),
                            "--quiet", "--require-hashes", "--no-deps", "--only-binary=:all:", "--index-url",
                            lk.index_url(), "--report", str(report), *lk.platform_args(target), "-r", str(requirements))
        assert result.returncode == 0, f"{name} for {target}: {result.stderr[-2000:]}"
        import json

        got = {lk.normalize(i["metadata"]["name"]): i["download_info"]["archive_info"]["hashes"]["sha256"]
               for i in json.loads(report.read_text())["install"]}
        locked = {e.key: e for e in chosen if e not in sdist_only}
        assert set(got) == set(locked), name
        assert all(digest in locked[key].hashes for key, digest in got.items()), name


def test_the_build_refuses_a_lock_that_lost_a_pin(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pymodbus==3.16.1"', '"pymodbus==3.16.0"'))
    result = gdk_build(project, "--component", "factoryedge.ModbusCollector")
    assert result.returncode == 1
    assert "locks/factoryedge.ModbusCollector.txt: pymodbus==3.16.0 is pinned in pyproject.toml but the lock " \
           "locks 3.16.1; run `python tools/lock.py`" in result.stderr


# --- install.sh on a device, with hand-made wheels and no index --------------------------------------------------


def artifact(tmp_path: Path, requirements: str, bootstrap: str = "") -> Path:
    root = tmp_path / "artifact"
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tools" / "gg_install.sh", root / "install.sh")
    (root / "requirements.txt").write_text(requirements)
    (root / "requirements-bootstrap.txt").write_text(bootstrap)
    (root / "wheels" / "PYTHON_VERSION").write_text(f"{PYTHON}\n")
    return root


def install(root: Path, venv: Path) -> subprocess.CompletedProcess[str]:
    """install.sh as the nucleus runs it, with no index and none of this machine's pip settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(FACTORYEDGE_PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/")
    return subprocess.run(["sh", str(root / "install.sh"), str(venv)], capture_output=True, text=True, env=env,
                          check=False, timeout=300)


def imports(venv: Path, module: str) -> bool:
    return subprocess.run([venv / "bin" / "python", "-c", f"import {module}"], capture_output=True).returncode == 0


def test_a_file_that_differs_from_the_locked_one_fails_the_install(tmp_path: Path) -> None:
    locked = wheel(tmp_path, "fegtiny")
    requirements = lock_line(locked, "fegtiny")
    root = artifact(tmp_path, requirements)
    wheel(root / "wheels", "fegtiny", body=b"import os; VALUE = os.getpid()\n")  # same name, other bytes
    venv = tmp_path / "venv"
    result = install(root, venv)
    assert result.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr
    assert lk.sha256(locked) in result.stderr
    assert not imports(venv, "fegtiny")
    assert not (venv / ".factoryedge-requirements.sha256").exists()


def test_an_unhashed_requirement_is_refused(tmp_path: Path) -> None:
    root = artifact(tmp_path, "fegtiny==1.0\n")
    wheel(root / "wheels", "fegtiny")
    venv = tmp_path / "venv"
    result = install(root, venv)
    assert result.returncode != 0
    assert "Hashes are required in --require-hashes mode" in result.stderr
    assert not imports(venv, "fegtiny")


def test_a_dependency_missing_from_the_lock_is_not_fetched_and_fails_the_install(tmp_path: Path) -> None:
    root = artifact(tmp_path, "")
    parent = wheel(root / "wheels", "fegparent", requires=("fegchild",))
    wheel(root / "wheels", "fegchild")  # available, but not locked: must not be installed
    (root / "requirements.txt").write_text(lock_line(parent, "fegparent"))
    venv = tmp_path / "venv"
    result = install(root, venv)
    assert result.returncode == 1
    assert "fegparent 1.0 requires fegchild, which is not installed" in result.stdout
    assert "misses a dependency" in result.stderr
    assert not imports(venv, "fegchild")
    assert not (venv / ".factoryedge-requirements.sha256").exists()
