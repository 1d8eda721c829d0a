"""Loading component configuration: from a YAML/JSON file outside Greengrass, from the deployment under it.

The pydantic models are the single source of truth; this module only turns their validation errors into one line
per problem that names the field, the bad value and the fix, so nothing starts half-configured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError
from gateway.redact import is_secret_key, redact_url

M = TypeVar("M", bound=BaseModel)

# Keys Greengrass puts into a component's configuration that are not ours to validate.
GREENGRASS_KEYS = ("accessControl",)

_FIXES = {
    "extra_forbidden": "remove it or check its spelling (see `gatewayctl config defaults`)",
    "missing": "add it",
    "union_tag_invalid": "use one of the listed types",
    "string_pattern_mismatch": "use the form the field's description gives (`gatewayctl config explain KEY`)",
    "literal_error": "use one of the listed values",
}


def format_errors(exc: ValidationError, data: Any = None) -> list[str]:
    """One line per problem: ``field.path: message (got value). Fix: ...``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        shown = "***" if any(is_secret_key(p) for p in err["loc"]) else _short(_redact(err.get("input")))
        # an unknown key is often a misspelt secret (passwort, pw, api_key): its value is never shown
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {shown})"
        fix = _FIXES.get(err["type"], "correct the value")
        lines.append(f"{where}: {msg}{got}. Fix: {fix}")
    return lines


def validate(model: type[M], data: Any, *, origin: str) -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` listing every problem."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in GREENGRASS_KEYS}
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        problems = format_errors(exc, data)
        raise ConfigError(f"{origin}: {len(problems)} problem(s) in the configuration", problems=problems) from exc
    problems = lax_problems(config, data)
    if problems:
        raise ConfigError(f"{origin}: {len(problems)} problem(s) in the configuration", problems=problems)
    return config


# Upper bounds by the unit a field's name ends in: beyond them a value is a typo or an attack (1e308 seconds
# overflows every timer), never a setting.
_BOUNDS = (("_ms", 1e12, "milliseconds"), ("_s", 1e9, "seconds"), ("_bytes", 2.0**50, "bytes"))


def lax_problems(config: BaseModel, raw: Any, where: str = "") -> list[str]:
    """What pydantic's lax mode lets through although no one means it: ``port: true`` (a boolean taken as 1), an
    infinite or NaN number, and numbers beyond any sensible bound (``interval_s: 1e308``). One line each."""
    problems: list[str] = []
    for name in type(config).model_fields:
        value, path = getattr(config, name), f"{where}{name}"
        given = raw.get(name) if isinstance(raw, dict) else None
        problems += _lax_value(path, name, value, given)
    return problems


def _lax_value(path: str, name: str, value: Any, given: Any) -> list[str]:
    if isinstance(value, BaseModel):
        return lax_problems(value, given, f"{path}.")
    if isinstance(value, list | tuple):
        items = given if isinstance(given, list) else [None] * len(value)
        return [p for i, (v, g) in enumerate(zip(value, items, strict=False)) for p in _lax_value(
            f"{path}.{i}", name, v, g)]
    if isinstance(given, bool) and type(value) in (int, float):
        return [f"{path}: {str(given).lower()} is not a number (YAML reads yes/no/true/false as booleans). Fix: "
                "write the number"]
    if type(value) is float and not math.isfinite(value):
        return [f"{path}: {value} is not a finite number. Fix: write a number"]
    if type(value) in (int, float):
        for suffix, bound, unit in _BOUNDS:
            if name.endswith(suffix) and abs(value) > bound:
                return [f"{path}: {value:g} {unit} is beyond any sensible setting (at most {bound:g}). Fix: write the "
                        "intended number"]
    return []


# A configuration is a few kB to a few MB (large tag lists); these bounds only stop hostile or broken files.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_NODES = 1_000_000  # YAML nodes after aliases are expanded: a 360-byte alias bomb expands to billions
MAX_DEPTH = 100


def read_file(path: str | Path) -> Any:
    """Parse a YAML or JSON configuration file, in bounded time and memory whatever the file holds."""
    p = Path(path)
    kind = "JSON" if p.suffix == ".json" else "YAML"
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size} bytes, more than a configuration file can be "
                              f"({MAX_FILE_BYTES} bytes)", fix="check that this is the configuration file")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {p}: {exc.strerror}", fix="check the path") from exc
    if b"\0" in raw:
        raise ConfigError(f"{p} is a binary file, not {kind} text", fix="give the YAML or JSON configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{p} is not UTF-8 text (invalid byte at line {line})",
                          fix="save the file as UTF-8 (most editors: 'Save with encoding')") from exc
    try:
        return json.loads(text) if p.suffix == ".json" else _yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc.message}", fix=exc.fix) from exc
    except RecursionError as exc:
        raise ConfigError(f"{p} is nested too deeply to be a configuration",
                          fix=f"keep the nesting under {MAX_DEPTH} levels") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p} is not valid {kind}: {_syntax(exc)}", fix="fix the syntax at the position shown") \
            from exc


def _yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses, before building anything, a document too big or too deep once its aliases
    are expanded (an alias bomb is a few hundred bytes that validation would walk for minutes)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _bounded(node)
        return loader.construct_document(node) or {}
    finally:
        loader.dispose()


def _bounded(root: yaml.Node) -> None:
    count, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(f"the YAML expands to more than {MAX_NODES} values (aliases such as *a repeat what "
                              "they name)", fix="write the configuration without nested aliases")
        if depth > MAX_DEPTH:
            raise ConfigError(f"the YAML is nested deeper than {MAX_DEPTH} levels",
                              fix=f"keep the nesting under {MAX_DEPTH} levels")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((part, depth + 1) for pair in node.value for part in pair)


def _syntax(exc: Exception) -> str:
    """What is wrong and where, never the text around it: the bad line may be the one holding a password."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = []
        if exc.context:
            where = f" (line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})" \
                if exc.context_mark else ""
            parts.append(f"{exc.context}{where}")
        if exc.problem:
            where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}" \
                if exc.problem_mark else ""
            parts.append(f"{exc.problem}{where}")
        return ": ".join(parts) or type(exc).__name__
    return type(exc).__name__


def load_file(model: type[M], path: str | Path) -> M:
    """Read and validate a configuration file."""
    return validate(model, read_file(path), origin=str(path))


def _redact(value: Any) -> Any:
    """The value with every secret-looking key's value masked and URL user info hidden, at any depth."""
    if isinstance(value, dict):
        return {k: "***" if is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
