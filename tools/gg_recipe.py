"""Recipe templates: filling placeholders, merging generated configuration, and validating the result.

With ``build_system: custom`` GDK fills nothing and validates nothing, so this module does both. Placeholders
are ``{UPPER_CASE}`` (``{COMPONENT_NAME}``, ``{COMPONENT_VERSION}``, ``{COMPONENT_PUBLISHER}``); they never clash
with Greengrass recipe variables, which are lower case with a colon (``{work:path}``), nor with shell ``${VAR}``.
Every problem is reported as ``<recipe file>: <key path>: <what is wrong>``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import yaml

MAX_RECIPE_BYTES = 16_000
RECIPE_FORMAT = "2020-01-25"
PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Z][A-Z0-9_]*)\}")
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
ARTIFACT_URI = re.compile(r"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/([^/]+)")
ARTIFACT_PATH = re.compile(r"\{artifacts:decompressedPath\}/([^\s\"']+)")
MODULE_RUN = re.compile(r"-m\s+([A-Za-z_][\w.]*)")
COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ACCESS_CONTROL = "accessControl"


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(key path, value)`` for every leaf, paths like ``Manifests[0].Lifecycle.Run.Script``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")
    else:
        yield path, node


def fill(node: Any, values: dict[str, str]) -> Any:
    """Return a copy of ``node`` with known placeholders replaced in every string (keys included)."""

    def sub(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    if isinstance(node, dict):
        return {(sub(k) if isinstance(k, str) else k): fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, values) for v in node]
    return sub(node) if isinstance(node, str) else node


def unfilled(recipe: dict[str, Any]) -> list[str]:
    """``key path: {PLACEHOLDER}`` for every placeholder still in the recipe (in keys or values)."""
    problems: list[str] = []
    for path, value in walk(recipe):
        for text in (path, value if isinstance(value, str) else ""):
            problems.extend(f"{path}: placeholder {{{name}}} is not filled" for name in PLACEHOLDER.findall(text))
    return sorted(set(problems))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``extra`` replaces what ``base`` had."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_default_configuration(
    recipe: dict[str, Any], name: str, hook: Callable[[str], dict[str, Any]] | None, recipe_file: str
) -> tuple[dict[str, Any], list[str]]:
    """Merge ``hook(name)`` into ``ComponentConfiguration.DefaultConfiguration``; return it with its problems.

    The hook is ``gateway.componentconfig.default_configuration``, generated from the pydantic config models, so
    the models are the only source of defaults: a key the template writes by hand besides ``accessControl`` is a
    problem (``<key path>: not in the generated configuration``), whether the model lacks it or the template just
    repeats it. ``accessControl`` stays owned by the template, so that permissions are reviewed in one place. A
    component without a model (the hook raises KeyError) keeps the template's configuration, with a warning.
    """
    if hook is None:
        return recipe, []
    try:
        generated = hook(name)
    except KeyError as exc:
        print(f"gg_build: {recipe_file}: DefaultConfiguration not generated: {exc.args[0]}", file=sys.stderr)
        return recipe, []
    if not isinstance(generated, dict):
        raise ValueError(
            f"{recipe_file}: gateway.componentconfig.default_configuration({name!r}) returned "
            f"{type(generated).__name__}, expected a dict"
        )
    if ACCESS_CONTROL in generated:
        raise ValueError(
            f"{recipe_file}: gateway.componentconfig.default_configuration({name!r}) returned accessControl: "
            "IPC permissions belong in the recipe template, remove them from the generated configuration"
        )
    config = dict(recipe.get("ComponentConfiguration") or {})
    written = dict(config.get("DefaultConfiguration") or {})
    problems = [
        f"ComponentConfiguration.DefaultConfiguration.{key}: written in the template, but defaults come from the "
        "configuration model (gateway/componentconfig.py): remove it from the template, or add the field to the model"
        for key in written
        if key != ACCESS_CONTROL
    ]
    config["DefaultConfiguration"] = merge(written, generated)
    return {**recipe, "ComponentConfiguration": config}, problems


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors (the nucleus gets the expanded form) and readable multi-line scripts."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(recipe: dict[str, Any]) -> str:
    """The recipe as YAML text, keys in template order."""
    return yaml.dump(recipe, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def _check_top(recipe: dict[str, Any], version: str) -> list[str]:
    problems = []
    if recipe.get("RecipeFormatVersion") != RECIPE_FORMAT:
        problems.append(f"RecipeFormatVersion: must be {RECIPE_FORMAT!r}, not {recipe.get('RecipeFormatVersion')!r}")
    name = recipe.get("ComponentName")
    if not isinstance(name, str) or not COMPONENT_NAME.fullmatch(name):
        problems.append(f"ComponentName: {name!r} is not a component name")
    found = recipe.get("ComponentVersion")
    if not isinstance(found, str) or not SEMVER.fullmatch(found):
        problems.append(f"ComponentVersion: {found!r} is not a semantic version (major.minor.patch)")
    elif found != version:
        problems.append(f"ComponentVersion: {found!r} differs from the build version {version!r}")
    if not recipe.get("ComponentPublisher"):
        problems.append("ComponentPublisher: missing or empty")
    for dep, spec in (recipe.get("ComponentDependencies") or {}).items():
        if not isinstance(spec, dict) or not spec.get("VersionRequirement"):
            problems.append(f"ComponentDependencies.{dep}.VersionRequirement: missing")
        elif spec.get("DependencyType", "HARD") not in ("HARD", "SOFT"):
            problems.append(f"ComponentDependencies.{dep}.DependencyType: must be HARD or SOFT")
    manifests = recipe.get("Manifests")
    if not isinstance(manifests, list) or not manifests:
        problems.append("Manifests: missing or empty")
    return problems


def _check_manifest(where: str, manifest: dict[str, Any], archives: dict[str, set[str]]) -> list[str]:
    problems = []
    platform = manifest.get("Platform") or {}
    if platform.get("os") != "linux":
        problems.append(f"{where}.Platform.os: expected linux, got {platform.get('os')!r}")
    for index, artifact in enumerate(manifest.get("Artifacts") or []):
        key = f"{where}.Artifacts[{index}]"
        uri = str(artifact.get("URI", ""))
        match = ARTIFACT_URI.fullmatch(uri)
        if match is None:
            problems.append(f"{key}.URI: {uri!r} is not s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>")
            continue
        if match.group(1) not in archives:
            problems.append(f"{key}.URI: {match.group(1)} was not produced (built: {', '.join(sorted(archives))})")
        if match.group(1).endswith(".zip") and artifact.get("Unarchive") != "ZIP":
            problems.append(f"{key}.Unarchive: must be ZIP for {match.group(1)}")
    lifecycle = manifest.get("Lifecycle")
    if not isinstance(lifecycle, dict):
        return [*problems, f"{where}.Lifecycle: missing"]
    if archives and not ("Run" in lifecycle or "Startup" in lifecycle):
        problems.append(f"{where}.Lifecycle: neither Run nor Startup")
    for path, value in walk(lifecycle, f"{where}.Lifecycle"):
        problems.extend(_check_references(path, str(value), archives))
    return problems


def _check_references(path: str, text: str, archives: dict[str, set[str]]) -> list[str]:
    """Every ``{artifacts:decompressedPath}/X/...`` and ``-m module`` must exist in the zip X unpacks from."""
    problems = []
    for ref in ARTIFACT_PATH.findall(text):
        root, _, inner = ref.partition("/")
        members = archives.get(f"{root}.zip")
        if members is None:
            problems.append(f"{path}: {{artifacts:decompressedPath}}/{root} is not an unpacked artifact of this recipe")
            continue
        inner = inner.rstrip("/")
        if inner and inner not in members and not any(m.startswith(inner + "/") for m in members):
            problems.append(f"{path}: {ref} is not in {root}.zip")
    for module in MODULE_RUN.findall(text):
        base = module.replace(".", "/")
        candidates = {f"{base}.py", f"{base}/__main__.py"}
        if not any(candidates & members for members in archives.values()):
            problems.append(f"{path}: module {module} is not in any artifact zip of this recipe")
    return problems


def validate(recipe: dict[str, Any], text: str, version: str, archives: dict[str, set[str]]) -> list[str]:
    """Problems of one produced recipe (empty when valid).

    Args:
        recipe: the filled recipe.
        text: the exact YAML that will be written (its size is what Greengrass limits).
        version: the build version every recipe must carry.
        archives: zip file name -> member names, for the artifacts this recipe's component produced.
    """
    problems = unfilled(recipe)
    size = len(text.encode())
    if size > MAX_RECIPE_BYTES:
        problems.append(f"(whole recipe): {size} bytes, Greengrass accepts at most {MAX_RECIPE_BYTES}")
    problems.extend(_check_top(recipe, version))
    for index, manifest in enumerate(recipe.get("Manifests") or []):
        if not isinstance(manifest, dict):
            problems.append(f"Manifests[{index}]: not a mapping")
            continue
        problems.extend(_check_manifest(f"Manifests[{index}]", manifest, archives))
    return problems


def policy_ids(recipe: dict[str, Any]) -> list[str]:
    """The IPC authorization policy ids a recipe declares (they must be unique across components)."""
    config = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}
    services = config.get(ACCESS_CONTROL) or {}
    return [policy for policies in services.values() for policy in (policies or {})]
