"""Build every Greengrass component of the gateway: what ``gdk component build`` runs (gdk-config.json).

GDK runs this in the project root with whatever ``python3`` is on PATH and does nothing else for a custom build,
so this script fills and validates the recipes itself. It writes, for version V of ``pyproject.toml``::

    greengrass-build/recipes/<Name>-V.yaml                 one per component, plus factoryedge.Gateway-V.yaml
    greengrass-build/artifacts/<Name>/V/<Name>.zip          one per real component
    greengrass-build/recipes/recipe.yaml                   the bundle's again, and an empty
    greengrass-build/artifacts/factoryedge.Gateway/V/       folder: what `gdk component publish` reads

It first runs itself in its own venv holding exactly the locked distributions (tools/gg_bootstrap.py), so a
machine with only Python 3.10-3.13 and GDK builds; the first build installs it, later ones start at once.

Usage: ``python3 tools/gg_build.py [--output-dir DIR] [--offline-wheels PLATFORM ...] [--python-version 3.11]``.
Exit status 0 when every recipe and zip is valid, 1 with one line per problem otherwise, 2 on a broken setup
(an unsupported Python, no venv module, the locked files not installable).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gg_artifact as art
import gg_bootstrap
import gg_lock as lk

if __name__ == "__main__":  # standard library so far: now make (once) and enter the venv that holds the rest
    gg_bootstrap.ensure(Path(__file__).resolve().parents[1], Path(__file__).resolve(), sys.argv[1:])

import gg_recipe as rcp  # imports PyYAML, which gg_bootstrap installed into the build venv
import yaml

BUNDLE_TEMPLATE = "recipe.yaml"
Hook = Callable[[str], dict[str, Any]]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project-dir", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--output-dir", type=Path, help="default: <project>/greengrass-build")
    parser.add_argument(
        "--offline-wheels",
        action="append",
        default=[],
        metavar="PLATFORM",
        help="put wheels for this platform (e.g. manylinux_2_28_x86_64) into each zip and install offline; "
        "repeat for more architectures. Recipes then only list the architectures given.",
    )
    parser.add_argument("--python-version", default="3.11", help="device Python for --offline-wheels")
    parser.add_argument(
        "--component", action="append", default=[], help="build only this component (no bundle); repeatable"
    )
    return parser.parse_args(argv)


def _gdk_config(project: Path, version: str) -> tuple[str, str]:
    """(bundle name, publisher) from gdk-config.json, checking what GDK and this build rely on."""
    path = project / "gdk-config.json"
    config = json.loads(path.read_text())
    components = config.get("component") or {}
    if len(components) != 1:
        raise art.BuildError(f"gdk-config.json: component: GDK allows exactly one, found {len(components)}")
    ((name, settings),) = components.items()
    if settings.get("version") != version:
        raise art.BuildError(
            f"gdk-config.json: component.{name}.version: {settings.get('version')!r} differs from pyproject.toml "
            f"version {version!r}; GDK publishes greengrass-build/recipes/{name}-<that version>.yaml: make them equal"
        )
    if not isinstance((settings.get("build") or {}).get("custom_build_command"), list):
        raise art.BuildError(f"gdk-config.json: component.{name}.build.custom_build_command: must be an array")
    return name, str(settings.get("author") or "")


def _load_hook(project: Path) -> Hook | None:
    """``gateway.componentconfig.default_configuration`` of the project being built, if it exists."""
    sys.path.insert(0, str(project))
    if importlib.util.find_spec("gateway") is None or importlib.util.find_spec("gateway.componentconfig") is None:
        return None
    try:
        module = importlib.import_module("gateway.componentconfig")
    except ImportError as exc:  # the build venv holds every locked distribution: our code is what is broken
        raise art.BuildError(f"gateway/componentconfig.py cannot be imported: {exc}") from exc
    hook = getattr(module, "default_configuration", None)
    if hook is None:
        print("gg_build: gateway.componentconfig has no default_configuration(); not merged", file=sys.stderr)
        return None
    return hook  # type: ignore[no-any-return]


def _load_template(path: Path, project: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise art.BuildError(f"{path.relative_to(project)}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise art.BuildError(f"{path.relative_to(project)}: not a YAML mapping")
    return data


def _keep_architectures(recipe: dict[str, Any], platforms: list[str]) -> dict[str, Any]:
    """With offline wheels a zip only installs on the architectures it has wheels for: list only those."""
    if not platforms:
        return recipe
    wanted = {art.platform_architecture(p) for p in platforms}
    kept = [m for m in recipe["Manifests"] if (m.get("Platform") or {}).get("architecture") in wanted]
    return {**recipe, "Manifests": kept}


class Build:
    """One run of the build: collects problems from every recipe, writes recipes only when all are valid."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.project: Path = args.project_dir.resolve()
        self.out: Path = (args.output_dir or self.project / "greengrass-build").resolve()
        self.platforms: list[str] = args.offline_wheels
        self.python_version: str = args.python_version
        pyproject = (self.project / "pyproject.toml").read_text()
        self.version = art.project_version(pyproject)
        self.pins = art.project_pins(pyproject)
        self.bundle, self.publisher = _gdk_config(self.project, self.version)
        self.only: list[str] = args.component
        self.problems: list[str] = []
        self.recipes: dict[str, str] = {}
        self.summary: list[tuple[str, int]] = []
        self.import_checks: list[tuple[str, str, Path]] = []

    def check_imports(self) -> None:
        """Import every entry point from its zip with only its requirements (in parallel: each is a child python)."""

        def check(job: tuple[str, str, Path]) -> list[str]:
            source, name, zip_path = job
            module = ",".join(art.entry_modules(name))
            return [f"{source}: {p}" for p in art.import_problems(name, zip_path, module, self.pins, self.project)]

        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            for problems in pool.map(check, self.import_checks):
                self.problems.extend(problems)

    def _fill(self, template: dict[str, Any], name: str) -> dict[str, Any]:
        values = {"COMPONENT_NAME": name, "COMPONENT_VERSION": self.version, "COMPONENT_PUBLISHER": self.publisher}
        return rcp.fill(template, values)  # type: ignore[no-any-return]

    def _check(self, source: str, name: str, recipe: dict[str, Any], archives: dict[str, set[str]]) -> None:
        text = rcp.dump(recipe)
        problems = rcp.validate(recipe, text, self.version, archives)
        if recipe.get("ComponentName") != name:
            problems.append(f"ComponentName: {recipe.get('ComponentName')!r}, expected {name!r} (the file name)")
        self.problems.extend(f"{source}: {p}" for p in problems)
        self.recipes[name] = text

    def component(self, name: str, hook: Hook | None, wheel_dir: Path) -> dict[str, Any]:
        source = f"recipes/{name}.yaml"
        # The device installs the lock, not the pins: a lock that no longer holds a pin of pyproject.toml would
        # install other versions than the ones tested.
        lock, bootstrap = lk.read(self.project, name), lk.read(self.project, "bootstrap")
        stale = lk.drift(lock, art.requirements_for(name, self.pins), f"locks/{name}.txt")
        stale += lk.drift(bootstrap, list(lk.BOOTSTRAP), "locks/bootstrap.txt")
        if stale:
            raise lk.LockError("\n  ".join(stale))
        extra = {
            "requirements.txt": lk.lock_path(self.project, name).read_bytes(),
            "requirements-bootstrap.txt": lk.lock_path(self.project, "bootstrap").read_bytes(),
            "install.sh": (self.project / "tools" / "gg_install.sh").read_bytes(),
        }
        wheels: list[Path] = []
        for platform in self.platforms:
            art.platform_architecture(platform)  # refuses a platform no recipe manifest has, before downloading
            target = lk.Target(self.python_version, platform)
            wheels = lk.download([*bootstrap, *lock], target, wheel_dir / name)
        if self.platforms:
            extra["wheels/PYTHON_VERSION"] = f"{self.python_version}\n".encode()
        zip_path = self.out / "artifacts" / name / self.version / f"{name}.zip"
        art.write_zip(zip_path, art.source_files(self.project, name), extra, wheels)
        with zipfile.ZipFile(zip_path) as archive:
            members = set(archive.namelist())
        self.summary.append((name, zip_path.stat().st_size))
        self.import_checks.append((source, name, zip_path))
        recipe = self._fill(_load_template(self.project / source, self.project), name)
        # a component without a configuration model (factoryedge.Cli): its template's defaults are its own
        recipe, problems = rcp.apply_default_configuration(
            recipe, name, hook if art.spec(name).config else None, source)
        self.problems.extend(f"{source}: {p}" for p in problems)
        recipe = _keep_architectures(recipe, self.platforms)
        self._check(source, name, recipe, {zip_path.name: members})
        return recipe

    def bundle_recipe(self) -> None:
        recipe = self._fill(_load_template(self.project / BUNDLE_TEMPLATE, self.project), self.bundle)
        deps = recipe.get("ComponentDependencies") or {}
        for name in sorted(set(art.component_names()) - set(deps)):
            self.problems.append(f"{BUNDLE_TEMPLATE}: ComponentDependencies: {name} is missing")
        for dep, spec in deps.items():
            if dep not in art.component_names():
                self.problems.append(f"{BUNDLE_TEMPLATE}: ComponentDependencies.{dep}: not a component of this build")
            elif (spec or {}).get("VersionRequirement") != f"={self.version}":
                self.problems.append(
                    f"{BUNDLE_TEMPLATE}: ComponentDependencies.{dep}.VersionRequirement: must pin ={self.version}"
                )
        self._check(BUNDLE_TEMPLATE, self.bundle, recipe, {})

    def run(self) -> int:
        templates = {p.stem for p in (self.project / "recipes").glob("*.yaml")}
        for name in sorted(templates ^ set(art.component_names())):
            where = ("no recipe template (python3 tools/gg_templates.py writes it)" if name in art.component_names()
                     else "not a component of gateway/components.py")
            self.problems.append(f"recipes/{name}.yaml: {where}")
        for stale in ("recipes", "artifacts"):
            shutil.rmtree(self.out / stale, ignore_errors=True)
        hook = _load_hook(self.project)
        names = self.only or art.component_names()
        ids: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="gg-wheels-") as wheel_dir:
            for name in names:
                if name not in art.component_names():
                    raise art.BuildError(f"--component {name}: not one of {', '.join(art.component_names())}")
                for policy in rcp.policy_ids(self.component(name, hook, Path(wheel_dir))):
                    if policy in ids:
                        self.problems.append(
                            f"recipes/{name}.yaml: accessControl policy id {policy!r} already used by {ids[policy]}"
                        )
                    ids[policy] = name
        self.check_imports()
        if not self.only:
            self.bundle_recipe()
        if self.problems:
            print("gg_build: FAILED, nothing written to greengrass-build/recipes:", file=sys.stderr)
            for problem in self.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        (self.out / "recipes").mkdir(parents=True, exist_ok=True)
        for name, text in self.recipes.items():
            (self.out / "recipes" / f"{name}-{self.version}.yaml").write_text(text)
        if self.bundle in self.recipes:
            # What `gdk component publish` reads for the one component of gdk-config.json: the built recipe under the
            # template's file name, and the bundle's artifact folder (empty: the bundle has no artifacts). Without
            # that folder GDK builds again and then fails listing it.
            (self.out / "recipes" / BUNDLE_TEMPLATE).write_text(self.recipes[self.bundle])
            (self.out / "artifacts" / self.bundle / self.version).mkdir(parents=True, exist_ok=True)
        self._print_summary()
        return 0

    def _print_summary(self) -> None:
        print(f"gg_build: version {self.version} -> {self.out}")
        for name, size in self.summary:
            print(f"  {name:<30} {self.version:<10} {size / 1024:>8.1f} KiB")
        if not self.only:
            print(f"  {self.bundle:<30} {self.version:<10} {'(bundle)':>12}")
        unused = art.unused_pins(self.pins)
        if unused:
            print(f"gg_build: pinned but shipped by no component: {', '.join(unused)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        return Build(args).run()
    except (art.BuildError, lk.LockError, ValueError, OSError) as exc:
        print(f"gg_build: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
