"""`gdk component build` on a machine with only Python (and GDK): tools/gg_build.py makes its own venv from the locks.

GDK runs ``python3 tools/gg_build.py`` (gdk-config.json); here that python3 is a fresh venv's with nothing
installed, the index is unreachable and the locked files come from a folder ($FACTORYEDGE_WHEELS), filled first
by ``pip download`` of exactly the locked files (the only step that needs the index, or pip's cache). Also checked:
what ``gdk component publish`` reads afterwards (GDK's PublishCommand: ``greengrass-build/recipes/recipe.yaml``
naming the component, and the folder ``greengrass-build/artifacts/<name>/<version>/``, which it builds again and
then lists when it is missing).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.gdk_build import BUILT, BUNDLE, PYTHON, VERSION, make_project, zip_of

# isort: split
import gg_bootstrap  # tools/ is on sys.path through tests.support.gdk_build
import gg_lock as lk


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The locked files this machine's build venv installs, downloaded once (hash-checked)."""
    folder = tmp_path_factory.mktemp("wheels")
    target = lk.Target(PYTHON, f"manylinux_2_28_{platform.machine()}")
    root = Path(__file__).resolve().parents[1]
    entries = [*lk.read(root, "bootstrap"), *lk.parse(gg_bootstrap.requirements(root))]
    lk.download(entries, target, folder)
    return folder


@pytest.mark.slow  # the first run downloads the locked files (~100 MB) unless pip's cache holds them
def test_build_works_with_a_python_that_has_nothing_installed(tmp_path: Path, wheels: Path) -> None:
    project = make_project(tmp_path / "project")
    (project / ".build-venv").unlink()  # no shared build venv: this machine has none
    bare = tmp_path / "bare"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(bare)],
                   check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "GG_BUILD", "FACTORYEDGE_", "PYTHON"))}
    env.update(PATH=f"{bare / 'bin'}:{env.get('PATH', '')}", PIP_INDEX_URL="http://127.0.0.1:9/",
               FACTORYEDGE_WHEELS=str(wheels))
    assert subprocess.run(["python3", "-c", "import yaml"], env=env, capture_output=True).returncode != 0
    result = subprocess.run(["python3", "tools/gg_build.py"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stderr
    assert "preparing" in result.stderr
    build = project / "greengrass-build"
    for name in BUILT:
        assert zip_of(build, name).is_file()
    # What `gdk component publish` reads: the built bundle under the template's name, and its artifact folder.
    published = yaml.safe_load((build / "recipes" / "recipe.yaml").read_text())
    assert published == yaml.safe_load((build / "recipes" / f"{BUNDLE}-{VERSION}.yaml").read_text())
    assert published["ComponentName"] == BUNDLE
    bundle_artifacts = build / "artifacts" / BUNDLE / VERSION
    assert bundle_artifacts.is_dir() and list(bundle_artifacts.iterdir()) == []
    again = subprocess.run(["python3", "tools/gg_build.py"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=900, check=False)
    assert again.returncode == 0 and "preparing" not in again.stderr, again.stderr  # made once


def test_an_unsupported_python_is_refused_naming_it_and_the_range() -> None:
    with pytest.raises(gg_bootstrap.SetupError, match=r"Python 3\.9 .* Python 3\.10 to 3\.13 only"):
        gg_bootstrap.check_python((3, 9))
    gg_bootstrap.check_python((3, 13))
