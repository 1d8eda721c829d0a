"""Write ``locks/``: every distribution each component installs, indirect ones included, with its files' sha256.

Usage: ``python tools/lock.py [--check]`` (needs the package index; PIP_INDEX_URL names a mirror). Run it after
changing a pin in ``pyproject.toml``, a component's ``requires`` in ``gateway/components.py``, or
``BOOTSTRAP`` / ``TARGETS`` in ``tools/gg_lock.py``; commit ``locks/``. ``--check`` writes nothing and exits 1 when
the committed locks differ from a fresh resolution (a new release of an indirect dependency shows up there too).

How: for each component and each target, pip resolves the component's pins as it would on that device
(``pip install --dry-run --report`` with the target's ``--platform`` / ``--python-version``, wheels only). A pin
published only as an sdist is built here into a pure-Python wheel so that pip can read its dependencies, and locked
as its sdist. Each target contributes the file pip chose for it; targets that agree on a version share one entry.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import gg_artifact as art
import gg_lock as lk

PROJECT = Path(__file__).resolve().parents[1]
_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)==(\S+)")
Resolved = dict[str, tuple[str, str, str, str]]  # key -> (name, version, file name, sha256)


class Locker:
    """One run: resolves every component for every target; builds sdist-only pins once."""

    def __init__(self, work: Path) -> None:
        self.sdists = work / "sdists"
        self.pure = work / "pure"
        self.work = work
        self.sdist_files: dict[str, tuple[str, str]] = {}  # key -> (sdist file name, sha256)

    def _build_from_sdist(self, name: str, version: str) -> None:
        """Fetch the sdist of a pin that has no wheel and build a pure-Python wheel of it for resolving only."""
        key = lk.normalize(name)
        before = set(self.sdists.glob("*")) if self.sdists.is_dir() else set()
        got = lk.pip("download", "-q", "--no-deps", "--no-binary=:all:", "--index-url", lk.index_url(),
                      "-d", str(self.sdists), f"{name}=={version}")
        new = sorted(set(self.sdists.glob("*")) - before)
        if got.returncode != 0 or len(new) != 1:
            raise lk.LockError(f"{name}=={version}: no wheel for a target and its sdist failed:\n{got.stderr}")
        built = lk.pip("wheel", "-q", "--no-deps", "--index-url", lk.index_url(), "-w", str(self.pure), str(new[0]))
        wheels = [w for w in self.pure.glob("*.whl") if lk.normalize(w.name.split("-")[0]) == key]
        if built.returncode != 0 or not wheels:
            raise lk.LockError(f"{name}=={version}: building a wheel from its sdist failed:\n{built.stderr}")
        if not all(w.name.endswith("-none-any.whl") for w in wheels):
            raise lk.LockError(f"{name}=={version}: published only as an sdist and not pure Python ({wheels[0].name}); "
                               "devices could not build it: pin a version with wheels")
        self.sdist_files[key] = (new[0].name, lk.sha256(new[0]))

    def resolve(self, requirements: list[str], target: lk.Target) -> Resolved:
        """What pip installs for ``requirements`` on ``target``: ``{key: (name, version, file, sha256)}``."""
        # pip evaluates pins' markers for this machine, not for --python-version: choose the target's pins here.
        chosen = [lk.requirement(r) for r in requirements]
        requirements = [f"{e.name}=={e.version}" for e in chosen if e.applies_to(target)]
        pins = {e.key: e.version for e in chosen if e.applies_to(target)}
        for _attempt in range(2 * len(requirements) + 2):
            with tempfile.TemporaryDirectory(prefix="lock-", dir=self.work) as tmp:
                report = Path(tmp) / "report.json"
                result = lk.pip(
                    "install", "--dry-run", "--ignore-installed", "--target", str(Path(tmp) / "t"), "--quiet",
                    "--report", str(report), "--index-url", lk.index_url(), "--only-binary=:all:",
                    "--find-links", str(self.pure), *lk.platform_args(target), *requirements,
                )
                if result.returncode == 0:
                    data = json.loads(report.read_text())
                    missing_deps = _unmet(data, target)
                    if not missing_deps:
                        return self._read_report(data, target)
                    # pip evaluates dependencies' markers for this interpreter, not --python-version: what the
                    # target needs beyond that (exceptiongroup on 3.10) is asked for explicitly, and resolved again.
                    requirements = [*requirements, *missing_deps]
                    continue
            missing = _MISSING.search(result.stderr)
            if missing is None or pins.get(lk.normalize(missing.group(1))) != missing.group(2):
                raise lk.LockError(f"pip cannot resolve {' '.join(requirements)} for {target}:\n{result.stderr}")
            self._build_from_sdist(missing.group(1), missing.group(2))
        raise lk.LockError(f"resolving for {target} kept failing")

    def _read_report(self, report: dict[str, object], target: lk.Target) -> Resolved:
        resolved: Resolved = {}
        for item in report["install"]:  # type: ignore[attr-defined]
            name, version = item["metadata"]["name"], item["metadata"]["version"]
            key, url = lk.normalize(name), item["download_info"]["url"]
            if url.startswith("file:"):  # one of ours from self.pure: lock the index's sdist it was built from
                if key not in self.sdist_files:
                    raise lk.LockError(f"{name} {version} for {target} came from {url}, not from the index")
                resolved[key] = (name, version, *self.sdist_files[key])
            else:
                digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
                resolved[key] = (name, version, url.rsplit("/", 1)[-1], digest)
        return resolved


def _unmet(report: dict[str, Any], target: lk.Target) -> list[str]:
    """Requirements of the resolved distributions that apply on ``target`` but that nothing resolved satisfies."""
    from packaging.requirements import Requirement

    items = report["install"]
    have = {lk.normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    missing: list[str] = []
    for item in items:
        extras = item.get("requested_extras") or []
        for line in item["metadata"].get("requires_dist") or []:
            req = Requirement(line)
            envs = [{**target.environment(), "extra": extra} for extra in ("", *extras)]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = lk.normalize(req.name)
            if key not in have:
                req.marker = None
                missing.append(str(req))
    return sorted(set(missing))


def merge(per_target: dict[lk.Target, Resolved], targets: tuple[lk.Target, ...]) -> list[lk.Entry]:
    """One entry per (distribution, version): the files of every target that resolved to it, and a marker
    naming those targets unless that is all of them."""
    groups: dict[tuple[str, str], list[lk.Target]] = defaultdict(list)
    files: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    names: dict[str, str] = {}
    for target in targets:
        for key, (name, version, filename, digest) in per_target[target].items():
            groups[(key, version)].append(target)
            files[(key, version)][filename] = digest
            names[key] = name
    entries = []
    for (key, version), where in groups.items():
        marker = None if len(where) == len(targets) else " or ".join(f"({t.marker})" for t in where)
        chosen = dict(sorted(files[(key, version)].items()))
        entries.append(lk.Entry(names[key], version, marker, list(chosen.values()), list(chosen)))
    return entries


def generate(project: Path, targets: tuple[lk.Target, ...] = lk.TARGETS) -> dict[str, str]:
    """``{file name under locks/: text}`` for every component and the bootstrap lock."""
    pins = art.project_pins((project / "pyproject.toml").read_text())
    wanted = {name: art.requirements_for(name, pins) for name in art.component_names()}
    wanted["bootstrap"] = list(lk.BOOTSTRAP)
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="factoryedge-lock-") as work:
        locker = Locker(Path(work))
        for name, requirements in wanted.items():
            per_target = {}
            for target in targets:
                print(f"lock: resolving {name} for {target}", file=sys.stderr)
                per_target[target] = locker.resolve(requirements, target)
            title = ("pip and setuptools of every device venv, installed before anything else" if name == "bootstrap"
                     else f"{name}: its pins in pyproject.toml and everything they need")
            texts[lk.lock_path(project, name).name] = lk.render(title, merge(per_target, targets), targets)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project-dir", type=Path, default=PROJECT)
    parser.add_argument("--check", action="store_true", help="compare with locks/ instead of writing it")
    args = parser.parse_args(argv)
    try:
        texts = generate(args.project_dir)
    except (lk.LockError, art.BuildError) as exc:
        print(f"lock: FAILED: {exc}", file=sys.stderr)
        return 1
    folder = args.project_dir / lk.LOCK_DIR
    if args.check:
        stale = [n for n, t in texts.items() if not (folder / n).is_file() or (folder / n).read_text() != t]
        for name in stale:
            print(f"lock: locks/{name} differs from a fresh resolution; {lk.REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.txt"):
        if old.name not in texts:
            old.unlink()
    for name, text in texts.items():
        (folder / name).write_text(text)
    print(f"lock: wrote {', '.join(sorted(texts))} to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
