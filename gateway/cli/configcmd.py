"""``gatewayctl config check | defaults | explain``: the component models answer every configuration question.

``explain`` walks a dotted key through the pydantic models: lists and dict values are stepped into, and a part
naming a union member's ``type`` (``destinations.mqtt.port``) picks that member.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.cli.common import EXIT_OK, EXIT_USAGE, print_json
from gateway.errors import ConfigError


def register(subparsers: Any) -> None:
    config = subparsers.add_parser(
        "config", help="check configurations, show defaults, explain a key",
        description="Examples:\n  gatewayctl config check collector.yaml publisher.yaml\n"
        "  gatewayctl config check --deployed\n  gatewayctl config defaults factoryedge.Publisher\n"
        "  gatewayctl config explain factoryedge.Publisher destinations.mqtt.port",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate configuration files, or the deployed configuration (--deployed)")
    check.add_argument("files", nargs="*", metavar="[COMPONENT=]FILE")
    check.add_argument("--component", help="the component the files are for (default: recognised per file)")
    check.set_defaults(func=cmd_check)
    defaults = sub.add_parser("defaults", help="print a component's default configuration")
    defaults.add_argument("component")
    defaults.set_defaults(func=cmd_defaults)
    explain = sub.add_parser("explain", help="description, type, default and constraints of a configuration key")
    explain.add_argument("component", help="component, e.g. factoryedge.Publisher (or the whole dotted key)")
    explain.add_argument("key", nargs="?", default="", help="dotted key, e.g. destinations.mqtt.port")
    explain.set_defaults(func=cmd_explain)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.cli import configs

    if args.files:
        loaded = [configs.load_file_for(f, args.component) for f in args.files]
    elif args.deployed or getattr(args, "config_files", None) or getattr(args, "config_dir", None):
        loaded = configs.load(args)
    else:
        print("gatewayctl config check: give FILE..., --config/--config-dir, or --deployed", file=sys.stderr)
        return EXIT_USAGE
    if not loaded:
        print("no configuration found (no component deployed?)", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json([{"component": c.component, "origin": c.origin, "valid": c.ok, "problems": c.problems,
                     **({"recognised": c.how} if c.how else {})} for c in loaded])
    else:
        for c in loaded:
            # a file checked against the wrong model reports the wrong problems: say which model and why
            what = f"checked as {c.component} ({c.how})" if c.how else f"the {c.component} configuration"
            if c.ok:
                print(f"✔ {c.origin}: valid, {what}")
            else:
                print(f"✘ {c.origin}: {len(c.problems)} problem(s), {what}", file=sys.stderr)
                for p in c.problems:
                    print(f"    {p}", file=sys.stderr)
    return EXIT_OK if all(c.ok for c in loaded) else EXIT_USAGE


def cmd_defaults(args: argparse.Namespace) -> int:
    import yaml

    from gateway.cli.configs import component_model

    data: Any = json.loads(component_model(args.component)().model_dump_json())
    # an explicit empty connection list is refused (a mistake); left out, the collector runs idle: the defaults
    # printed must pass `config check` as they are
    idle = data.get("connections") == []
    if idle:
        del data["connections"]
    if args.json:
        print(json.dumps(data, indent=1))
        return EXIT_OK
    print(yaml.safe_dump(data, sort_keys=False), end="")
    if idle:
        print("# connections: [...]   the servers to read (docs/collectors.md); left out, the collector runs idle")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.cli.configs import component_model, components

    component, key = args.component, args.key
    if not key:  # one dotted argument: the longest component name that prefixes it
        for name in sorted(components(), key=len, reverse=True):
            if component == name or component.startswith(name + "."):
                component, key = name, component[len(name) + 1 :]
                break
    info = explain(component_model(component), key)
    info = {"component": component, **info}
    if args.json:
        print_json(info)
        return EXIT_OK
    print(f"{component} {info['key'] or '(top level)'}")
    for label in ("description", "type", "default", "constraints", "allowed", "fields"):
        value: Any = info.get(label)
        if label == "default" and "type" in info:
            value = json.dumps(value)
        elif value in (None, "", [], {}):
            continue
        if label == "fields":
            print("  fields:")
            for name, desc in value.items():
                print(f"    {name}: {desc}")
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            print(f"  {label}: {shown}")
    return EXIT_OK


def explain(model: type[BaseModel], key: str) -> dict[str, Any]:
    """What a dotted key of ``model`` is; raises ConfigError naming the first part that does not exist."""
    models: list[type[BaseModel]] = [model]
    field: FieldInfo | None = None
    walked: list[str] = []
    for part in [p for p in key.split(".") if p]:
        fields = {name: f for m in models for name, f in m.model_fields.items()}
        members = [m for m in models if _type_tag(m) == part]
        if part not in fields and members and len(models) > 1:  # destinations.mqtt: pick the union member
            models = members
            walked.append(part)
            continue
        if part not in fields:
            where = ".".join(walked) or "the top level"
            options = sorted(fields) + sorted(t for m in models if (t := _type_tag(m)) and len(models) > 1)
            raise ConfigError(f"{'.'.join([*walked, part])}: no such key under {where}",
                              fix=f"use one of: {', '.join(options) or '(no sub-keys: it is a value)'}")
        field = fields[part]
        walked.append(part)
        models = _models_in(field.annotation)
    out: dict[str, Any] = {"key": ".".join(walked)}
    if field is not None:
        out["description"] = field.description or ""
        out["type"] = _type_name(field.annotation)
        out["default"] = _default(field)
        out["constraints"] = [_constraint(m) for m in field.metadata]
        out["allowed"] = _allowed(field.annotation)
    else:
        out["description"] = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    if models:
        out["fields"] = {n: (f.description or "") for m in models for n, f in m.model_fields.items()}
        if len(models) > 1:
            out["types"] = [t for m in models if (t := _type_tag(m))]
    return out


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The models a value of this annotation may be (through Optional, list, dict values, unions, Annotated)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(tp)
    inner = _args(tp)[1:] if origin is dict else _args(tp)[:1] if origin is typing.Annotated else _args(tp)
    for a in inner:
        found += [m for m in _models_in(a) if m not in found]
    return found


def _type_tag(model: type[BaseModel]) -> str:
    f = model.model_fields.get("type")
    return str(f.default) if f is not None and isinstance(f.default, str) else ""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not _args(tp):
        return tp.__name__ if not issubclass(tp, enum.Enum) else "string"
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in _args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in _args(tp))
    if origin in (list, dict, tuple, set):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in _args(tp))}]"
    return str(tp).replace("typing.", "")


def _allowed(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return list(_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return [v for a in _args(tp) for v in _allowed(a)]
    return []


def _default(field: FieldInfo) -> Any:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "(required)"
    if isinstance(value, BaseModel):
        return json.loads(value.model_dump_json())
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return [json.loads(v.model_dump_json()) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return value


def _constraint(meta: Any) -> str:
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length",
             "pattern": "pattern", "multiple_of": "multiple of"}
    for attr, label in names.items():
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{label} {value}"
    return str(meta)
