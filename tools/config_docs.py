"""The configuration reference tables of docs/*.md, generated from the pydantic models.

The models are the single source of truth (docs/DEVELOPING.md): a table written by hand drifts from them. Each table
lives between two markers, and only what is between them is rewritten; the prose around a table is kept::

    <!-- BEGIN GENERATED: factoryedge.Publisher:destinations[mqtt] -->
    <!-- END GENERATED: factoryedge.Publisher:destinations[mqtt] -->

The key names a model by where it is used, not by its class name, so that renaming a class changes no marker:

- ``factoryedge.Publisher``: a component's configuration model;
- ``factoryedge.Publisher:destinations[mqtt]``: a field path from it; ``.`` steps into a field (through lists, dict
  values and Optional), ``[mqtt]`` picks the member of a union whose ``type`` is ``mqtt``; a union left unpicked is
  the model its members share (the settings every destination has);
- ``ConnectionBase``: a class name, for a model no path reaches by itself (a base class).

A table has one row per field: name, type, default, description and constraints (bounds, length, pattern, the
allowed values). A nested model is written out under its parent's name (``security.policy``) unless it has a table
of its own, which is then linked; fields a base class with a table of its own declares are left out and named
below the table.

Usage::

    python -m tools.config_docs --write   # rewrite every generated region
    python -m tools.config_docs --check   # exit 1, naming every region that differs from the models
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (python tools/config_docs.py): the models are the project's own
    sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs"
REGION = re.compile(r"(<!-- BEGIN GENERATED: (?P<key>[^>]+?) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=key) -->)",
                    re.S)


def component_models() -> dict[str, type[BaseModel]]:
    """``{component name: configuration model}``, from the component table."""
    from gateway.components import config_models

    return config_models()


# --- the models: walking annotations -------------------------------------------------------------------------------
def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def models_in(tp: Any) -> list[type[BaseModel]]:
    """The models a value of this annotation may be (through Optional, list, dict values, unions, Annotated)."""
    if _is_model(tp):
        return [tp]
    origin = typing.get_origin(tp)
    inner = _args(tp)[1:] if origin is dict else _args(tp)[:1] if origin is typing.Annotated else _args(tp)
    found: list[type[BaseModel]] = []
    for a in inner:
        found += [m for m in models_in(a) if m not in found]
    return found


def type_tag(model: type[BaseModel]) -> str:
    """The ``type`` literal of a union member (``mqtt``), or ``""``."""
    f = model.model_fields.get("type")
    return str(f.default) if f is not None and isinstance(f.default, str) else ""


def common_base(members: list[type[BaseModel]]) -> type[BaseModel]:
    """The most derived model every member inherits from (the settings every destination has)."""
    for base in members[0].__mro__:
        if _is_model(base) and base is not BaseModel and all(issubclass(m, base) for m in members):
            return base
    raise LookupError(f"{', '.join(m.__name__ for m in members)} share no model")


def reachable() -> dict[str, type[BaseModel]]:
    """Every model the components' configurations use, and their model bases, by class name."""
    seen: dict[str, type[BaseModel]] = {}
    todo = list(component_models().values())
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        todo += [b for b in model.__mro__[1:] if _is_model(b) and b is not BaseModel]
        for f in model.model_fields.values():
            todo += models_in(f.annotation)
    return seen


def resolve(key: str) -> type[BaseModel]:
    """The model a region key names (module docstring).

    Raises:
        LookupError: the key names nothing, with what it could name instead.
    """
    components = component_models()
    head, _, path = key.partition(":")
    if head not in components:
        classes = reachable()
        if key in classes:
            return classes[key]
        raise LookupError(f"{key}: neither a component ({', '.join(components)}) nor a model class they use")
    models = [components[head]]
    for step in [s for s in path.split(".") if s]:
        name, _, pick = step.partition("[")
        fields = {n: f for m in models for n, f in m.model_fields.items()}
        if name not in fields:
            raise LookupError(f"{key}: no field {name!r} (there are: {', '.join(fields)})")
        models = models_in(fields[name].annotation)
        if pick:
            wanted = pick.rstrip("]")
            models = [m for m in models if type_tag(m) == wanted]
            if not models:
                raise LookupError(f"{key}: no member of type {wanted!r} in {name}")
        if not models:
            raise LookupError(f"{key}: {name} holds no model")
    return models[0] if len(models) == 1 else common_base(models)


# --- rendering ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where a model's table is: for links from other tables."""

    file: str
    anchor: str


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _link(model: type[BaseModel], places: dict[type[BaseModel], Place], here: str, text: str = "") -> str:
    place = places[model]
    target = ("" if place.file == here else place.file) + (f"#{place.anchor}" if place.anchor else "")
    return f"[{text or model.__name__}]({target})"


def type_name(tp: Any) -> str:
    """A reader's name of an annotation: string, number, list of string, ``x`` or null, ..."""
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret",
             SecretBytes: "secret", type(None): "null"}
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in _args(tp)))
    if origin is typing.Literal:
        return " or ".join(dict.fromkeys(type_name(type(a)) for a in _args(tp)))
    if origin in (list, tuple, set):
        return f"list of {type_name(_args(tp)[0])}"
    if origin is dict:
        key, value = _args(tp)
        return f"map of {type_name(key)} to {type_name(value)}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "string"
    if _is_model(tp):
        return "object"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _literals(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return list(_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [v for a in (_args(tp)[:1] if origin is typing.Annotated else _args(tp)) for v in _literals(a)]
    return []


def _bound(meta: Any) -> list[str]:
    out = []
    for attr, label in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of")):
        value = getattr(meta, attr, None)
        if value is not None:
            out.append(f"`{label} {value}`")
    for attr, label in (("min_length", "at least {} long"), ("max_length", "at most {} long")):
        value = getattr(meta, attr, None)
        if value is not None:
            out.append(label.format(value))
    pattern = getattr(meta, "pattern", None)
    if pattern is not None:
        out.append(f"pattern `{pattern}`")
    return out


def constraints(field: FieldInfo) -> str:
    """Bounds, lengths, patterns and allowed values of a field (and of each item of a list)."""
    out = [c for meta in field.metadata for c in _bound(meta)]
    items = [a for a in _args(field.annotation) if typing.get_origin(a) is typing.Annotated]
    if typing.get_origin(field.annotation) is list and items:
        metas = [m for meta in _args(items[0])[1:] for m in (meta.metadata if isinstance(meta, FieldInfo) else [meta])]
        out += [f"each {c}" for meta in metas for c in _bound(meta)]
    values = [v for v in _literals(field.annotation) if v is not None]
    if values:
        out.append("one of " + ", ".join(f"`{v}`" for v in values))
    return "; ".join(out)


def _value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json", exclude_defaults=True)
        tag = type_tag(type(value))
        return {"type": tag, **data} if tag else data
    if isinstance(value, list):
        return [_value(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 30, not 30.0: what one writes in YAML, and the same value
    return value


def default(name: str, field: FieldInfo) -> str:
    """The default as it would be written in YAML, or ``required``."""
    if field.is_required():
        return "required"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()  # type: ignore[call-arg,misc]
    if isinstance(value, (SecretStr, SecretBytes)):
        return "(secret)"
    value = _value(value)
    shown = f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`" if value else '`""`'
    if isinstance(value, int) and not isinstance(value, bool) and "bytes" in name and value >= 1024:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{shown} ({value // size} {unit})"
    return shown


def _cell(text: str) -> str:
    """One table cell: on one line, ``|`` escaped, and outside code spans ``<name>`` and ``*`` kept as text (Markdown
    would take them for an HTML tag and emphasis)."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


Row = tuple[str, str, str, str, str]


def rows(model: type[BaseModel], places: dict[type[BaseModel], Place], here: str, prefix: str = "",
         skip: frozenset[str] = frozenset()) -> list[Row]:
    """One row per field of ``model``; nested models without a table of their own are written out under it."""
    out: list[Row] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + name
        nested = models_in(field.annotation)
        kind = type_name(field.annotation)
        linked = [m for m in nested if m in places]
        if nested and len(linked) == len(nested):
            links = [_link(m, places, here, type_tag(m) if len(nested) > 1 else "") for m in nested]
            kind = kind.replace("object", " or ".join(links) if len(links) == 1 else "one of " + ", ".join(links), 1)
        out.append((f"`{key}`", kind, default(name, field), _cell(field.description or ""), constraints(field)))
        if len(nested) == 1 and not linked:
            origin = typing.get_origin(field.annotation)
            inner = "[]." if origin is list else ".<name>." if origin is dict else "."
            out += rows(nested[0], places, here, key + inner)
    return out


def inherited(model: type[BaseModel], places: dict[type[BaseModel], Place]) -> list[type[BaseModel]]:
    """The bases of ``model`` that have a table of their own: their fields are shown there, not again here."""
    return [b for b in model.__mro__[1:] if _is_model(b) and b is not BaseModel and b in places]


def render(model: type[BaseModel], places: dict[type[BaseModel], Place], here: str) -> str:
    """The Markdown table of ``model``, as it belongs between its markers."""
    bases = inherited(model, places)
    skip = frozenset(n for b in bases for n in b.model_fields)
    lines = ["| field | type | default | description | constraints |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r).rstrip() + " |" for r in rows(model, places, here, skip=skip)]
    if bases:
        lines.append("")
        lines.append("And the fields of " + ", ".join(_link(b, places, here) for b in bases) + ".")
    return "\n".join(lines) + "\n"


# --- the docs -------------------------------------------------------------------------------------------------------
@dataclass
class Region:
    """One generated region of a doc."""

    file: Path
    key: str
    body: str
    anchor: str


def regions(docs: Path = DOCS) -> list[Region]:
    """Every generated region of ``docs/*.md``, in file order."""
    found = []
    for path in sorted(docs.glob("*.md")):
        text = path.read_text()
        for match in REGION.finditer(text):
            headings = re.findall(r"^#{1,6} (.+)$", text[: match.start()], re.M)
            found.append(Region(path, match["key"], match["body"], slug(headings[-1]) if headings else ""))
    return found


def places_of(found: list[Region]) -> dict[type[BaseModel], Place]:
    """Where each model's (first) table is."""
    places: dict[type[BaseModel], Place] = {}
    for r in found:
        places.setdefault(resolve(r.key), Place(r.file.name, r.anchor))
    return places


def generate(docs: Path = DOCS) -> dict[Path, str]:
    """Every doc with a generated region, its text with every region rendered from the models."""
    found = regions(docs)
    places = places_of(found)
    out: dict[Path, str] = {}
    for path in dict.fromkeys(r.file for r in found):
        def fill(match: re.Match[str], path: Path = path) -> str:
            body = render(resolve(match["key"]), places, path.name)
            return f"{match[1]}{body}{match[4]}"

        out[path] = REGION.sub(fill, path.read_text())
    return out


def stale(docs: Path = DOCS) -> list[str]:
    """One line per region whose text differs from what the models give."""
    fresh = generate(docs)
    problems = []
    for r in regions(docs):
        match = next(m for m in REGION.finditer(fresh[r.file]) if m["key"] == r.key)
        if match["body"] != r.body:
            problems.append(f"{r.file.relative_to(docs.parent)}: {r.key}: stale (run python -m tools.config_docs "
                            "--write)")
    return problems


def documented_models() -> list[type[BaseModel]]:
    """The models that must have a table: every component's, and every member of their connection and destination
    unions (a new protocol or destination is documented, or this fails)."""
    wanted: list[type[BaseModel]] = []
    for model in component_models().values():
        wanted.append(model)
        for name in ("connections", "destinations"):
            field = model.model_fields.get(name)
            wanted += models_in(field.annotation) if field is not None else []
    return list(dict.fromkeys(wanted))


def uncovered(docs: Path = DOCS) -> list[str]:
    """One line per model of :func:`documented_models` that no region of ``docs`` renders."""
    have = set(places_of(regions(docs)))
    return [f"{m.__module__}.{m.__name__}: no generated region in {docs.name}/*.md (add <!-- BEGIN GENERATED: KEY --> "
            f"and <!-- END GENERATED: KEY --> where it belongs, KEY as in tools/config_docs.py, then --write)"
            for m in documented_models() if m not in have]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.config_docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", action="store_true", help="rewrite every generated region from the models")
    what.add_argument("--check", action="store_true", help="exit 1 naming every stale region")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale() + uncovered()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for path, text in generate().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
