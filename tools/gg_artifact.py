"""What goes into each component's artifact zip, and building it.

The component table (``gateway/components.py``, :class:`~gateway.components.ComponentSpec`) says, per Greengrass
component, which entry point it runs, which pinned third-party distributions it needs (names only: versions always
come from ``pyproject.toml``) and which optional ``gateway`` subpackages it ships. Everything else about a zip
follows from it.

A zip holds, at its root (Greengrass unpacks ``X.zip`` into ``{artifacts:decompressedPath}/X/``):
``gateway/`` (without ``cli/`` unless asked for; ``devkit/`` never), ``components/__init__.py``,
``components/<dir>/``, ``requirements.txt`` (the component's lock, ``locks/<Name>.txt``),
``requirements-bootstrap.txt`` (``locks/bootstrap.txt``), ``install.sh`` and, with offline wheels, ``wheels/``
(exactly the locked files, see tools/gg_lock.py).
Entries are sorted and time-stamped 1980-01-01 so that the same sources give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:  # run as a script from tools/ by any python3: the table is the project's own
    sys.path.insert(0, str(PROJECT))

from gateway.components import ComponentSpec, component, names  # noqa: E402  (standard library only)
from gateway.errors import ConfigError  # noqa: E402

# Parts of the gateway package that only development tools use; shipped only to components that list them.
OPTIONAL_GATEWAY_PARTS = ("cli",)
EXCLUDED_NAMES = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def spec(name: str) -> ComponentSpec:
    """The table's entry for component ``name``; BuildError naming the known ones otherwise."""
    try:
        return component(name)
    except ConfigError as exc:  # its message lists the known names
        raise BuildError(str(exc)) from None


def component_names() -> list[str]:
    """Every component of the table, sorted (the order of builds, locks and the summary)."""
    return sorted(names())


def entry_modules(name: str) -> tuple[str, ...]:
    """The modules the build imports from ``name``'s zip to prove it ships what they import."""
    comp = spec(name)
    return comp.check_modules or (comp.entry_module,)


class BuildError(Exception):
    """The build cannot produce a correct component; the message names the file, the key and the fix."""


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name (``OpenOPC_Python3x`` and ``openopc-python3x`` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins(pyproject_text: str) -> dict[str, list[str]]:
    """Return ``{normalised name: ["Name==version", ...]}`` for ``[project].dependencies`` of ``pyproject.toml``.

    A distribution pinned at different versions for different Pythons has one line per version, each with its
    environment marker (``"numpy==2.2.6; python_version < '3.11'"``; markers in single quotes). Parsed with a regex
    rather than ``tomllib`` because GDK runs the build with whatever ``python3`` is on PATH, which may be 3.10.
    Raises BuildError on a dependency that is not an exact pin.
    """
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject_text, re.S | re.M)
    if block is None:
        raise BuildError("pyproject.toml: no [project] dependencies list found")
    pins: dict[str, list[str]] = {}
    for spec in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)\s*(?:;\s*(\S.*?))?", spec.strip())
        if match is None:
            raise BuildError(
                f"pyproject.toml: dependency {spec!r} is not an exact pin (name==version, optionally '; marker')"
            )
        marker = f" ; {match.group(3)}" if match.group(3) else ""
        pins.setdefault(normalize(match.group(1)), []).append(f"{match.group(1)}=={match.group(2)}{marker}")
    for key, lines in pins.items():
        if len(lines) > 1 and any(";" not in line for line in lines):
            raise BuildError(
                f"pyproject.toml: {key} is pinned {len(lines)} times and not every pin has an environment marker: "
                "give each pin a marker that selects the Pythons it is for"
            )
    return pins


def project_version(pyproject_text: str) -> str:
    """The ``[project] version`` of ``pyproject.toml``: the one version of every component."""
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", pyproject_text, re.S | re.M)
    version = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M) if project else None
    if version is None:
        raise BuildError("pyproject.toml: no version in [project]")
    return version.group(1)


def requirements_for(name: str, pins: dict[str, list[str]]) -> list[str]:
    """The pinned requirement lines of one component, in table order (markers kept)."""
    lines = []
    for dist in spec(name).requires:
        pin = pins.get(normalize(dist))
        if pin is None:
            raise BuildError(
                f"gateway/components.py: {name} needs {dist!r}, which is not pinned in pyproject.toml: "
                "pin it there (name==version) or drop it from the component's requires"
            )
        lines.extend(pin)
    return lines


def unused_pins(pins: dict[str, list[str]]) -> list[str]:
    """Pinned runtime dependencies that no component ships (worth a warning: dead weight or a missing entry)."""
    used = {normalize(dist) for name in names() for dist in spec(name).requires}
    return sorted(line for key, lines in pins.items() if key not in used for line in lines)


def _files_under(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and not any(part in EXCLUDED_NAMES or part.startswith(".") for part in path.relative_to(directory).parts)
        and path.suffix not in EXCLUDED_SUFFIXES
    )


def source_files(project: Path, name: str) -> dict[str, Path | None]:
    """Map each archive path of a component's zip to its source file (None: an empty file)."""
    comp = spec(name)
    entry = project / "components" / comp.entry / "main.py"
    if comp.entry and not entry.is_file():
        raise BuildError(
            f"{entry.relative_to(project)} is missing: {name} has no entry point; write it (python3 "
            "tools/gg_templates.py), or fix its entry in gateway/components.py"
        )
    files: dict[str, Path | None] = {}
    gateway = project / "gateway"
    skipped = {part for part in OPTIONAL_GATEWAY_PARTS if part not in comp.gateway_parts}
    for path in _files_under(gateway):
        rel = path.relative_to(gateway)
        if rel.parts[0] not in skipped:
            files[f"gateway/{rel.as_posix()}"] = path
    if not comp.entry:
        return files
    init = project / "components" / "__init__.py"
    files["components/__init__.py"] = init if init.is_file() else None
    entry_root = entry.parent
    for path in _files_under(entry_root):
        files[f"components/{comp.entry}/{path.relative_to(entry_root).as_posix()}"] = path
    return files


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def write_zip(
    zip_path: Path,
    files: dict[str, Path | None],
    extra: dict[str, bytes],
    wheels: list[Path],
) -> None:
    """Write the artifact zip: source files, generated files (requirements, install script) and wheels."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, bytes] = {arc: (src.read_bytes() if src else b"") for arc, src in files.items()}
    entries.update(extra)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for arcname in sorted(entries):
            _add(archive, arcname, entries[arcname])
        for wheel in sorted(wheels):
            # Wheels are already compressed: store them.
            info = zipfile.ZipInfo(f"wheels/{wheel.name}", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, wheel.read_bytes())


def platform_architecture(platform: str) -> str:
    """Greengrass ``architecture`` of a wheel platform tag (``manylinux_2_28_x86_64`` -> ``amd64``)."""
    if platform.endswith("_x86_64"):
        return "amd64"
    if platform.endswith("_aarch64"):
        return "aarch64"
    raise BuildError(
        f"--offline-wheels {platform}: unsupported platform; use a manylinux tag ending in _x86_64 or _aarch64 "
        "(e.g. manylinux_2_28_x86_64)"
    )


# Runs in a child interpreter: imports the entry module from the unpacked zip while every pinned distribution the
# component does not ship is blocked, and prints the offending import chain on failure.
_IMPORT_CHECK = r"""
import importlib, importlib.abc, importlib.metadata, json, sys, traceback
root, module, blocked = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
owners = importlib.metadata.packages_distributions()
names = {top for top, dists in owners.items() if any(d.lower().replace("_", "-") in blocked for d in dists)}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, Block())
import os
project = os.path.realpath(sys.argv[4])  # an editable install of the project must not hide what the zip lacks
sys.path[:] = [root] + [p for p in sys.path if p and os.path.realpath(p) != project]
try:
    for name in module.split(","):
        importlib.import_module(name)
except ImportError as exc:
    chain = [f.filename[len(root) + 1:] for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)]
    print(json.dumps({"missing": exc.name, "chain": chain}))
    sys.exit(1)
"""


def import_problems(name: str, zip_path: Path, module: str, pins: dict[str, list[str]], project: Path) -> list[str]:
    """Import ``module`` from the zip with only the component's requirements: one line per missing dependency.

    Catches a shared module importing a heavy dependency at module level (numpy in every collector, say), which a
    device would only discover at start-up as a crash loop.
    """
    shipped = {normalize(dist) for dist in spec(name).requires}
    blocked = sorted(key for key in pins if key not in shipped)
    # Zips are reproducible, so a zip and blocked list that passed once pass again: remember them (builds in a row,
    # the tests) instead of starting an interpreter that imports asyncua and numpy every time.
    key = hashlib.sha256(zip_path.read_bytes() + json.dumps([module, blocked, sys.version]).encode()).hexdigest()
    passed = Path(tempfile.gettempdir()) / "factoryedge-gg-import-ok" / key
    if passed.exists():
        return []
    with tempfile.TemporaryDirectory(prefix="gg-import-") as root:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
        result = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHECK, root, module, json.dumps(blocked), str(project)],
            capture_output=True, text=True, check=False, cwd=root,
        )
    if result.returncode == 0:
        passed.parent.mkdir(parents=True, exist_ok=True)
        passed.touch()
        return []
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"{module}: importing it from {zip_path.name} failed:\n{result.stderr.strip()[-2000:]}"]
    chain = " -> ".join(found["chain"]) or module
    return [
        f"{module}: imports {found['missing']} ({chain}), which {name} does not ship: add it to the component's "
        "requires in gateway/components.py, or import it only where it is used"
    ]
