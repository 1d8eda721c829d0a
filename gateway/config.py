"""Loading component configuration: from a YAML/JSON file outside Greengrass, from the deployment under it.

The pydantic models are the single source of truth; this module only turns their validation errors into one line
per problem that names the field, the bad value and the fix, so nothing starts half-configured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError

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
        shown = "***" if _secret(err["loc"][-1] if err["loc"] else "") else _short(_redact(err.get("input")))
        got = "" if err["type"] == "missing" else f" (got {shown})"
        fix = _FIXES.get(err["type"], "correct the value")
        lines.append(f"{where}: {msg}{got}. Fix: {fix}")
    return lines


def validate(model: type[M], data: Any, *, origin: str) -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` listing every problem."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in GREENGRASS_KEYS}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = format_errors(exc, data)
        raise ConfigError(f"{origin}: {len(problems)} problem(s) in the configuration", problems=problems) from exc


def read_file(path: str | Path) -> Any:
    """Parse a YAML or JSON configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {p}: {exc.strerror}", fix="check the path") from exc
    try:
        if p.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}",
                          fix="fix the syntax at the position shown") from exc


def load_file(model: type[M], path: str | Path) -> M:
    """Read and validate a configuration file."""
    return validate(model, read_file(path), origin=str(path))


_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "passphrase")


def _secret(key: object) -> bool:
    # A misspelled key (``pasword: x``) is rejected as unknown and would otherwise be echoed with its value.
    name = str(key).lower().replace("_", "")
    return any(w in name for w in _SECRET_WORDS) or name in ("pasword", "pwd", "pass")


def _redact(value: Any) -> Any:
    """The value with every secret-looking key's value masked, at any depth: errors are logged and printed."""
    if isinstance(value, dict):
        return {k: "***" if _secret(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
