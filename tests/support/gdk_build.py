"""The Greengrass build as GDK runs it, in a copy of the project, and readers of what it wrote.

GDK itself is not installable here (not on PyPI), but for ``build_system: custom`` it only runs the command of
gdk-config.json in the project root, so running that command is the real build. The packaging tests
(test_packaging.py, test_packaging_install.py) build through :func:`gdk_build` in a :func:`make_project` copy.
What they iterate over comes from the component table (gateway/components.py) and gdk-config.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:  # the build's modules are scripts in tools/, imported by their file names
    sys.path.insert(0, str(ROOT / "tools"))

import gg_artifact  # noqa: E402

from gateway.components import COMPONENTS, of_kind  # noqa: E402

VERSION = gg_artifact.project_version((ROOT / "pyproject.toml").read_text())
(BUNDLE,) = json.loads((ROOT / "gdk-config.json").read_text())["component"]  # GDK's one component: the bundle
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
ENTRY_DIRS = {spec.name: spec.entry for spec in COMPONENTS if spec.entry}  # those with components/<entry>/main.py
BUILT = [spec.name for spec in COMPONENTS]  # every component with an artifact zip
COLLECTORS = tuple(spec.name for spec in of_kind("collector"))


def make_project(dest: Path) -> Path:
    """Copy what the build reads into ``dest``; stub entry points that other engineers have not written yet."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("gateway", "tools", "recipes", "locks"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    if (ROOT / "components").is_dir():
        shutil.copytree(ROOT / "components", dest / "components", ignore=ignore)
    for name in ("recipe.yaml", "gdk-config.json", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for extra in ("simulator", "tests"):  # present in a real checkout: the build must leave them out
        (dest / extra).mkdir(exist_ok=True)
        (dest / extra / "__init__.py").write_text("")
    for entry_dir in ENTRY_DIRS.values():
        main = dest / "components" / entry_dir / "main.py"
        if not main.exists():
            main.parent.mkdir(parents=True, exist_ok=True)
            main.write_text("import gateway\n")
    # The build runs itself in <project>/.build-venv (tools/gg_bootstrap.py): copies share the checkout's, made once.
    (dest / ".build-venv").symlink_to(ROOT / ".build-venv")
    return dest


def gdk_build(project: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the custom build command of gdk-config.json in ``project``, as ``gdk component build`` does."""
    config = json.loads((project / "gdk-config.json").read_text())
    command = config["component"][BUNDLE]["build"]["custom_build_command"]
    env = {k: v for k, v in os.environ.items() if k != "GG_BUILD_REEXECUTED"}
    return subprocess.run(
        [*command, *extra], cwd=project, capture_output=True, text=True, timeout=600, check=False, env=env
    )


def recipe_of(build: Path, name: str) -> dict[str, Any]:
    data = yaml.safe_load((build / "recipes" / f"{name}-{VERSION}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def zip_of(build: Path, name: str) -> Path:
    return build / "artifacts" / name / VERSION / f"{name}.zip"


def members(build: Path, name: str) -> set[str]:
    with zipfile.ZipFile(zip_of(build, name)) as archive:
        return set(archive.namelist())
