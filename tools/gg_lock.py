"""The dependency locks in ``locks/``: their format, the targets they cover, drift checks and locked downloads.

``tools/lock.py`` writes one lock per component (``locks/<Name>.txt``: every distribution pip resolves for the
component's pins in ``pyproject.toml``, indirect ones included) and ``locks/bootstrap.txt`` (the pip and setuptools
a device venv is upgraded to first). Each is a pip requirements file in hash-checking mode::

    numpy==2.4.6 \\
        --hash=sha256:<x86_64 wheel> \\
        --hash=sha256:<aarch64 wheel>
        # files: numpy-2.4.6-cp311-…x86_64.whl numpy-2.4.6-cp311-…aarch64.whl

One lock serves every target in :data:`TARGETS`: the hashes of the files each target installs are listed together
(pip on a device only considers files whose hash is listed), and a distribution whose resolved version differs
between targets gets one entry per version with an environment marker (``python_version == "3.10" and
platform_machine == "aarch64"``), which pip evaluates on the device. Adding a Python version or an architecture is
one line in :data:`TARGETS` and a run of ``python tools/lock.py``.

The build and the tests read locks with this module only (no network); ``packaging`` is needed only to evaluate
markers, which appear once targets resolve differently.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR = "locks"
BOOTSTRAP_LOCK = "bootstrap.txt"
# The device venv's own tools, upgraded first: the pip and setuptools that `python -m venv` bundles are whatever the
# device's Python shipped with (3.11: pip 23.2 and setuptools 65.5, both with published CVEs). setuptools also builds
# the two pins published only as sdists (rrcf, OpenOPC-Python3x) with --no-build-isolation, so that no unhashed
# build dependency is ever fetched on a device. setuptools stays below 81, which removed pkg_resources: rrcf 0.4.4
# imports it at import time without declaring it (80.10 has no open CVE). Change a version here, then run
# `python tools/lock.py`.
BOOTSTRAP = ("pip==26.3", "setuptools==80.10.2")
REGENERATE = "run `python tools/lock.py` (needs PyPI) and commit locks/"
_ENTRY = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)\s*(?:;\s*(.+?))?\s*$")


@dataclass(frozen=True)
class Target:
    """A device a lock covers: CPython minor version and manylinux wheel platform tag (its glibc floor)."""

    python: str
    platform: str

    @property
    def machine(self) -> str:
        """``platform_machine`` of the device (``x86_64``, ``aarch64``)."""
        return self.platform.split("_", 3)[-1] if self.platform.startswith("manylinux_") else self.platform

    @property
    def marker(self) -> str:
        """The environment marker that is true exactly on this target."""
        return f'python_version == "{self.python}" and platform_machine == "{self.machine}"'

    def environment(self) -> dict[str, str]:
        """Marker variables of such a device, for evaluating dependencies' markers here."""
        return {
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "platform_machine": self.machine,
            "sys_platform": "linux",
            "platform_system": "Linux",
            "os_name": "posix",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "extra": "",
        }

    def __str__(self) -> str:
        return f"{self.python} {self.platform}"


# Greengrass cores we ship for: Linux x86_64 and aarch64 (the recipes' manifests), glibc >= 2.28 (krcf needs it),
# and the system Pythons of the usual gateway OSes: 3.10 (Ubuntu 22.04, JetPack 6), 3.11 (Debian 12), 3.12 (Ubuntu
# 24.04), 3.13 (Debian 13). install.sh refuses any other Python, naming this range (SUPPORTED_PYTHONS).
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
TARGETS = tuple(Target(python, platform) for python in SUPPORTED_PYTHONS for platform in PLATFORMS)


@dataclass
class Entry:
    """One locked distribution version, for the targets its marker selects (all when it has none)."""

    name: str
    version: str
    marker: str | None = None
    hashes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return normalize(self.name)

    def applies_to(self, target: Target) -> bool:
        """Whether pip on ``target`` installs this entry (evaluates its marker as the device's pip would)."""
        if self.marker is None:
            return True
        try:
            from packaging.markers import Marker
        except ImportError as exc:  # the build's python3 may lack it: the venv has it (pyproject dev extra)
            raise LockError(f"reading markers in locks/ needs the 'packaging' distribution: {exc}") from exc
        return Marker(self.marker).evaluate(target.environment())

    def render(self) -> str:
        marker = f" ; {self.marker}" if self.marker else ""
        lines = [f"{self.name}=={self.version}{marker}", *(f"    --hash=sha256:{h}" for h in self.hashes)]
        return " \\\n".join(lines) + f"\n    # files: {' '.join(self.files)}\n"


class LockError(Exception):
    """A lock is missing, malformed or out of date; the message names the file and the fix."""


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(project: Path, name: str) -> Path:
    """``locks/<name>.txt`` of a component, or the bootstrap lock for ``name == "bootstrap"``."""
    return project / LOCK_DIR / (BOOTSTRAP_LOCK if name == "bootstrap" else f"{name}.txt")


def parse(text: str, source: str = "lock") -> list[Entry]:
    """Parse a lock written by :func:`render`. Raises LockError on anything else (a hand edit, say)."""
    entries: list[Entry] = []
    logical = re.sub(r"\\\n", " ", text)
    for number, line in enumerate(logical.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# files:") and entries:
            entries[-1].files = stripped.removeprefix("# files:").split()
            continue
        if not stripped or stripped.startswith("#"):
            continue
        requirement, *options = re.split(r"\s+(?=--hash=)", stripped)
        match = _ENTRY.fullmatch(requirement)
        hashes = [o.removeprefix("--hash=sha256:").strip() for o in options if o.startswith("--hash=sha256:")]
        if match is None or len(hashes) != len(options) or not hashes:
            raise LockError(f"{source}: line {number}: {stripped[:80]!r} is not 'name==version --hash=sha256:...'; "
                            f"{REGENERATE}")
        entries.append(Entry(match.group(1), match.group(2), match.group(3), hashes))
    return entries


def render(title: str, entries: list[Entry], targets: tuple[Target, ...] = TARGETS) -> str:
    """The text of a lock: a header saying what it is and how it is made, then the entries sorted by name."""
    header = [
        f"# {title}",
        "# Generated by `python tools/lock.py` from pyproject.toml: do not edit. Devices install it with",
        "# `pip install --require-hashes --no-deps -r`; tests/security/test_lock.py fails when it drifts.",
        *(f"# target: {t}" for t in targets),
    ]
    body = "".join(e.render() for e in sorted(entries, key=lambda e: (e.key, e.marker or "")))
    return "\n".join(header) + "\n" + body


def read(project: Path, name: str) -> list[Entry]:
    """Parse ``locks/<name>.txt``; LockError naming the file and the fix when it is missing or malformed."""
    path = lock_path(project, name)
    if not path.is_file():
        raise LockError(f"{path.relative_to(project)}: missing; {REGENERATE}")
    return parse(path.read_text(), str(path.relative_to(project)))


def requirement(line: str) -> Entry:
    """A pin line ``Name==version`` with an optional ``; marker``, as an entry without files."""
    match = _ENTRY.fullmatch(line.strip())
    if match is None:
        raise LockError(f"{line!r} is not 'name==version' with an optional '; marker'")
    return Entry(match.group(1), match.group(2), match.group(3))


def drift(entries: list[Entry], requirements: list[str], source: str) -> list[str]:
    """One line per top-level pin (``Name==version[ ; marker]``) the lock does not hold at that version."""
    locked: dict[str, set[str]] = {}
    for entry in entries:
        locked.setdefault(entry.key, set()).add(entry.version)
    problems = []
    for line in sorted(requirements):
        pin = requirement(line)
        if pin.version not in locked.get(pin.key, set()):
            have = f"locks {', '.join(sorted(locked[pin.key]))}" if pin.key in locked else "does not lock it"
            problems.append(f"{source}: {pin.name}=={pin.version} is pinned in pyproject.toml but the lock {have}; "
                            f"{REGENERATE}")
    return problems


def for_target(entries: list[Entry], target: Target) -> list[Entry]:
    """The entries pip installs on ``target`` (markers evaluated for it, not for this machine)."""
    return [e for e in entries if e.applies_to(target)]


def pip_env() -> dict[str, str]:
    """Environment for pip runs of the lock and the build: the index only, none of this machine's pip settings.

    A developer's pip.conf may add find-links or extra indexes holding locally built files, whose hashes are not
    the index's; only PIP_INDEX_URL (a mirror of the same files) is kept.
    """
    dropped = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_REQUIRE_HASHES"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True, text=True, check=False, env=pip_env(),
    )


def platform_args(target: Target) -> list[str]:
    """pip's options for downloading for ``target``: every glibc from the target's down to 2.17.

    pip does not widen an explicit ``--platform``: ``manylinux_2_28_x86_64`` alone would reject the many wheels
    tagged only ``manylinux2014`` (= ``manylinux_2_17``).
    """
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", target.platform)
    tags = [target.platform]
    if match is not None:
        glibc, arch = int(match.group(1)), match.group(2)
        tags = [*(f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)), f"manylinux2014_{arch}"]
    return [
        *(arg for tag in tags for arg in ("--platform", tag)),
        "--python-version", target.python, "--implementation", "cp",
    ]


def download(entries: list[Entry], target: Target, dest: Path) -> list[Path]:
    """Download exactly the locked files ``target`` installs into ``dest`` (hash-checked); return what is there.

    ``--no-deps``: the lock is the whole set. Wheels where the lock has them, the sdist of a pin published only as
    one (the device builds it with the locked setuptools).
    """
    chosen = for_target(entries, target)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gg-lock-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        # Markers were evaluated for the target above; pip here would evaluate them for this machine.
        requirements.write_text("".join(Entry(e.name, e.version, None, e.hashes, e.files).render() for e in chosen))
        result = pip(
            "download", "-q", "--require-hashes", "--no-deps", "--index-url", index_url(), "-d", str(dest),
            *platform_args(target), "-r", str(requirements),
        )
    if result.returncode != 0:
        raise LockError(
            f"pip download of the locked files for {target} failed (is {target} one of the lock's targets? add it "
            f"to TARGETS in tools/gg_lock.py and {REGENERATE}):\n{result.stderr.strip()[-3000:]}"
        )
    return sorted(dest.iterdir())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
