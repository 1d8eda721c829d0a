"""Recipes as the nucleus reads them, for ``gatewayctl dev run``: manifest, configuration, artifacts, variables.

What the nucleus does with a built component, done the same way under a dev run's root folder (the layout mirrors
``/greengrass/v2``)::

    <root>/packages/artifacts/<Name>/<version>/<file>                 {artifacts:path}
    <root>/packages/artifacts-unarchived/<Name>/<version>/<zip stem>/  {artifacts:decompressedPath}/<zip stem>
    <root>/work/<Name>/                                                {work:path}, the processes' working directory

Variables interpolated in lifecycle scripts and ``Setenv`` values: ``{artifacts:path}``,
``{artifacts:decompressedPath}``, ``{work:path}``, ``{configuration:/json/pointer}``, ``{iot:thingName}``,
``{kernel:rootPath}``, and the cross-component forms ``{<Component>:artifacts:path}``,
``{<Component>:artifacts:decompressedPath}``, ``{<Component>:work:path}``, ``{<Component>:configuration:/ptr}``.
Anything else in braces with a colon (``${SHELL_VARS}`` are left alone) is an error naming the recipe and the key.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError

VARIABLE = re.compile(r"(?<!\$)\{([A-Za-z0-9._-]+(?::[A-Za-z0-9._-]+)?:[^{}\s\"']*)\}")
STEPS = ("Install", "Startup", "Run", "Shutdown")
DEFAULT_TIMEOUT_S = {"Install": 120.0, "Startup": 120.0, "Shutdown": 15.0}
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "aarch64", "arm64": "aarch64", "armv7l": "arm"}


def this_architecture() -> str:
    """The Greengrass ``architecture`` of this machine (``amd64``, ``aarch64``, ...)."""
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


@dataclass
class Step:
    """One lifecycle step: the script and its settings, variables not yet interpolated."""

    script: str
    timeout_s: float | None
    setenv: dict[str, str]


@dataclass
class Component:
    """A built component ready to run: where its recipe and files are, its configuration and lifecycle."""

    name: str
    version: str
    recipe_file: Path
    recipe: dict[str, Any]
    manifest: dict[str, Any]
    artifacts_path: Path
    decompressed_path: Path
    work_path: Path
    config: dict[str, Any]
    manifest_index: int = 0
    dependencies: dict[str, str] = field(default_factory=dict)  # name -> HARD | SOFT

    @property
    def access_control(self) -> dict[str, Any]:
        return dict(self.config.get("accessControl") or {})

    def step(self, name: str) -> Step | None:
        lifecycle = self.manifest.get("Lifecycle") or {}
        raw = lifecycle.get(name)
        if raw is None:
            return None
        common = {str(k): str(v) for k, v in (lifecycle.get("Setenv") or {}).items()}
        if isinstance(raw, str):
            return Step(raw, DEFAULT_TIMEOUT_S.get(name), common)
        timeout = raw.get("Timeout", DEFAULT_TIMEOUT_S.get(name))
        setenv = {**common, **{str(k): str(v) for k, v in (raw.get("Setenv") or {}).items()}}
        return Step(str(raw.get("Script", "")), float(timeout) if timeout is not None else None, setenv)


def load_recipes(build: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{component name: (recipe file, recipe)}`` of every recipe in ``<build>/recipes``."""
    folder = build / "recipes"
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist", fix="build first: python3 tools/gg_build.py (or gdk component "
                          "build), or pass --build with the folder that holds recipes/ and artifacts/")
    recipes: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.json")]):
        recipe = yaml.safe_load(path.read_text())  # JSON is YAML
        if not isinstance(recipe, dict) or "ComponentName" not in recipe:
            raise ConfigError(f"{path}: not a Greengrass recipe (no ComponentName)", fix="remove it from recipes/")
        recipes[str(recipe["ComponentName"])] = (path, recipe)
    return recipes


def select_manifest(recipe_file: Path, recipe: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The first manifest whose platform matches this machine, as the nucleus picks it, and its index."""
    arch = this_architecture()
    for index, manifest in enumerate(recipe.get("Manifests") or []):
        wanted = manifest.get("Platform") or {}
        if wanted.get("os", "*") in ("*", "all", "linux") and wanted.get("architecture", "*") in ("*", arch):
            return index, dict(manifest)
    raise ConfigError(f"{recipe_file}: Manifests: no manifest for linux/{arch}",
                      fix=f"add a manifest for architecture {arch} to the recipe template and build again")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Greengrass MERGE: mappings merge key by key; anything else replaces (lists included)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def reset(config: dict[str, Any], pointers: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Greengrass RESET: each JSON pointer goes back to its default ("" resets everything)."""
    result = copy.deepcopy(config)
    for pointer in pointers:
        if pointer in ("", "/"):
            result = copy.deepcopy(defaults)
            continue
        keys = [k.replace("~1", "/").replace("~0", "~") for k in pointer.lstrip("/").split("/")]
        target, default = result, defaults
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            default = default.get(key, {}) if isinstance(default, dict) else {}
        if isinstance(default, dict) and keys[-1] in default:
            target[keys[-1]] = copy.deepcopy(default[keys[-1]])
        else:
            target.pop(keys[-1], None)
    return result


def configuration_update(defaults: dict[str, Any], current: dict[str, Any], update: Any) -> dict[str, Any]:
    """Apply one override: a plain mapping (merged), ``{"configurationUpdate": {"merge": ..., "reset": [...]}}`` as
    in a deployment document (``merge`` may be a JSON string there), or ``{"MERGE": ..., "RESET": [...]}`` as in a
    ``greengrass-cli deployment create --update-config`` file."""
    if not isinstance(update, dict):
        raise ConfigError(f"configuration override {update!r} is not a mapping", fix="write KEY: VALUE pairs")
    if update and set(update) <= {"MERGE", "RESET"}:  # greengrass-cli --update-config
        spec = {"merge": update.get("MERGE"), "reset": update.get("RESET")}
    elif "configurationUpdate" in update:
        spec = update["configurationUpdate"] or {}
    else:
        return deep_merge(current, update)
    merge = spec.get("merge") or {}
    if isinstance(merge, str):
        merge = json.loads(merge)
    return deep_merge(reset(current, list(spec.get("reset") or []), defaults), merge)


def read_overrides(path: Path | None) -> dict[str, Any]:
    """``{component: override}`` from a YAML/JSON file; a deployment document's ``components`` also works."""
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and isinstance(data.get("components"), dict):
        data = data["components"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping of component name to configuration", fix="see docs/deploying.md")
    return data


def unpack(name: str, version: str, recipe_file: Path, manifest: dict[str, Any], build: Path, root: Path
           ) -> tuple[Path, Path]:
    """Copy the artifacts to ``{artifacts:path}`` and unpack zips into ``{artifacts:decompressedPath}``."""
    artifacts = root / "packages" / "artifacts" / name / version
    decompressed = root / "packages" / "artifacts-unarchived" / name / version
    for index, artifact in enumerate(manifest.get("Artifacts") or []):
        file_name = str(artifact.get("URI", "")).rsplit("/", 1)[-1]
        source = build / "artifacts" / name / version / file_name
        if not source.is_file():
            raise ConfigError(f"{recipe_file}: Manifests.Artifacts[{index}].URI: {source} was not built",
                              fix="build again (python3 tools/gg_build.py)")
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, artifacts / file_name)
        if str(artifact.get("Unarchive", "NONE")).upper() == "ZIP":
            target = decompressed / Path(file_name).stem
            shutil.rmtree(target, ignore_errors=True)  # a new build replaces the files, as a new version would
            with zipfile.ZipFile(source) as archive:
                archive.extractall(target)
    decompressed.mkdir(parents=True, exist_ok=True)
    return artifacts, decompressed


def prepare(name: str, recipes: dict[str, tuple[Path, dict[str, Any]]], build: Path, root: Path,
            override: Any) -> Component:
    """Everything the nucleus knows about one component before it runs its lifecycle."""
    recipe_file, recipe = recipes[name]
    version = str(recipe.get("ComponentVersion"))
    index, manifest = select_manifest(recipe_file, recipe)
    defaults = dict((recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {})
    config = configuration_update(defaults, defaults, override) if override is not None else defaults
    artifacts, decompressed = unpack(name, version, recipe_file, manifest, build, root)
    work = root / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    dependencies = {dep: str((spec or {}).get("DependencyType", "HARD"))
                    for dep, spec in (recipe.get("ComponentDependencies") or {}).items()}
    return Component(name, version, recipe_file, recipe, manifest, artifacts, decompressed, work, config, index,
                     dependencies)


def _pointer(config: dict[str, Any], pointer: str) -> Any:
    node: Any = config
    for key in pointer.lstrip("/").split("/") if pointer.strip("/") else []:
        key = key.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise KeyError(pointer)
    return node


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # objects, lists, numbers and booleans as the nucleus writes them: JSON


def interpolate(text: str, where: str, component: Component, others: dict[str, Component], thing: str,
                root: Path) -> str:
    """Replace every recipe variable in ``text``; ``where`` names the recipe key for errors."""

    def value(match: re.Match[str]) -> str:
        parts = match.group(1).split(":", 2)
        owner = component
        if len(parts) == 3 and parts[1] in ("artifacts", "work", "configuration"):
            if parts[0] not in others:
                raise ConfigError(f"{component.recipe_file}: {where}: variable {{{match.group(1)}}} names "
                                  f"{parts[0]}, which this dev run does not run",
                                  fix=f"run {parts[0]} too, or remove the reference")
            owner, parts = others[parts[0]], parts[1:]
        namespace, key = parts[0], ":".join(parts[1:])
        if namespace == "artifacts" and key == "path":
            return str(owner.artifacts_path)
        if namespace == "artifacts" and key == "decompressedPath":
            return str(owner.decompressed_path)
        if namespace == "work" and key == "path":
            return str(owner.work_path)
        if namespace == "iot" and key == "thingName":
            return thing
        if namespace == "kernel" and key == "rootPath":
            return str(root)
        if namespace == "configuration" and key.startswith("/"):
            try:
                return _text(_pointer(owner.config, key))
            except KeyError:
                raise ConfigError(f"{component.recipe_file}: {where}: {{{match.group(1)}}}: no configuration value "
                                  f"at {key} of {owner.name}",
                                  fix="add the key to the model's defaults or the --config overrides") from None
        raise ConfigError(f"{component.recipe_file}: {where}: unknown recipe variable {{{match.group(1)}}}",
                          fix="use {artifacts:path}, {artifacts:decompressedPath}, {work:path}, "
                          "{configuration:/key}, {iot:thingName} or {kernel:rootPath}")

    return VARIABLE.sub(value, text)


NUCLEUS = "aws.greengrass.Nucleus"


def nucleus_interpolates(update: Any) -> bool:
    """The nucleus's ``interpolateComponentConfiguration`` after the overrides' ``aws.greengrass.Nucleus`` update.

    Off by default on a real core (``DeviceConfiguration``): then ``{iot:thingName}`` in a component's configuration,
    its accessControl included, stays literal text (``KernelConfigResolver``), and a recipe that scopes IoT Core
    topics to the thing name grants nothing. A dev run starts from the same default.
    """
    if update is None:
        return False
    return bool(configuration_update({}, {}, update).get("interpolateComponentConfiguration", False))
