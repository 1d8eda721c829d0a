"""Which configurations gatewayctl looks at, and for which component each is.

In order of preference: files given with ``--config``/``--config-dir``; the Greengrass deployment (``--deployed``,
or by default when gatewayctl itself runs under Greengrass), read over IPC with GetConfiguration of every component;
otherwise the files the running components were started with (``--config`` on their command line, found through the
pid in their status file), so ``gatewayctl doctor`` needs no arguments on a gateway run outside Greengrass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel


@dataclass
class LoadedConfig:
    """One component's configuration: valid (``config``) or not (``problems``)."""

    component: str
    origin: str
    config: Any = None  # the validated model instance
    problems: list[str] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path)  # relative paths in the configuration are relative to this
    raw: Any = None  # the data as read, so an invalid configuration still names its store

    @property
    def store_path(self) -> str | None:
        if self.config is not None:
            return str(self.config.store.path)
        store = self.raw.get("store") if isinstance(self.raw, dict) else None
        path = store.get("path") if isinstance(store, dict) else None
        return path if isinstance(path, str) else None

    @property
    def ok(self) -> bool:
        return self.config is not None


def components() -> dict[str, type[BaseModel]]:
    from gateway.componentconfig import COMPONENTS

    return COMPONENTS


def component_model(name: str) -> type[BaseModel]:
    known = components()
    if name in known:
        return known[name]
    matches = [k for k in known if k.lower().endswith(name.lower())]
    if len(matches) == 1:
        return known[matches[0]]
    raise ConfigError(f"unknown component {name!r}", fix=f"use one of {', '.join(sorted(known))}")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def recognise(path: Path, data: Any) -> str:
    """The component a configuration file is for: from its name, else the only model it fits (or fits best)."""
    known = components()
    stem = _norm(path.stem)
    by_name = [c for c in known if _norm(c.split(".")[-1]) in stem or stem in _norm(c.split(".")[-1])]
    candidates = by_name or list(known)
    if len(candidates) == 1:
        return candidates[0]
    from gateway.config import validate

    errors: dict[str, int] = {}
    for name in candidates:
        try:
            validate(known[name], data, origin=str(path))
            errors[name] = 0
        except ConfigError as exc:
            errors[name] = len(exc.problems) or 1
    best = min(errors.values())
    winners = [n for n, e in errors.items() if e == best]
    if len(winners) == 1:
        return winners[0]
    raise ConfigError(f"cannot tell which component {path} configures (could be {', '.join(winners)})",
                      fix=f"write --config COMPONENT={path}, e.g. --config {winners[0]}={path}")


def load_file_for(spec: str, component: str | None = None) -> LoadedConfig:
    """Load ``[COMPONENT=]FILE``; a bad file is a result with problems, an unreadable one raises ConfigError."""
    from gateway.config import read_file, validate

    name, sep, file = spec.partition("=")
    if not sep or "/" in name:
        name, file = component or "", spec
    path = Path(file)
    data = read_file(path)
    name = _resolve_name(name) if name else recognise(path, data)
    try:
        config = validate(components()[name], data, origin=str(path))
    except ConfigError as exc:
        return LoadedConfig(name, str(path), problems=exc.problems or [str(exc)], raw=data)
    return LoadedConfig(name, str(path), config, raw=data)


def _resolve_name(name: str) -> str:
    model = component_model(name)
    return next(k for k, v in components().items() if v is model)


def from_files(args: argparse.Namespace) -> list[LoadedConfig]:
    specs = list(getattr(args, "config_files", None) or [])
    folder = getattr(args, "config_dir", None)
    if folder:
        d = Path(folder)
        if not d.is_dir():
            raise ConfigError(f"--config-dir {d} is not a folder",
                              fix="give the folder holding the configuration files")
        specs += [str(p) for p in sorted(d.iterdir()) if p.suffix in (".yaml", ".yml", ".json")]
    return [load_file_for(s) for s in specs]


def from_deployment(timeout_s: float = 5.0) -> list[LoadedConfig]:
    """Every component's configuration from the nucleus (IPC GetConfiguration); components not deployed are left
    out."""
    from gateway.config import validate
    from gateway.ipc import GreengrassIpc

    async def fetch() -> list[LoadedConfig]:
        ipc = await asyncio.wait_for(GreengrassIpc.connect(), timeout_s)
        out = []
        try:
            for name, model in components().items():
                try:
                    data = await asyncio.wait_for(ipc.get_configuration(component=name), timeout_s)
                except ConfigError:
                    continue  # not deployed on this device
                try:
                    out.append(LoadedConfig(name, "deployment", validate(model, data, origin=f"{name} deployment")))
                except ConfigError as exc:
                    out.append(LoadedConfig(name, "deployment", problems=exc.problems or [str(exc)]))
        finally:
            ipc.close()
        return out

    return asyncio.run(fetch())


def from_processes(statuses: dict[str, dict[str, Any]]) -> list[LoadedConfig]:
    """The ``--config`` files of the running components (Linux /proc), relative to their working directory."""
    out = []
    for name, status in statuses.items():
        pid = int(status.get("pid") or 0)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = Path(f"/proc/{pid}/cwd").resolve()
        except OSError:
            continue  # not running, or not ours to look at
        if "--config" not in argv[:-1] or name not in components():
            continue
        path = Path(argv[argv.index("--config") + 1])
        path = path if path.is_absolute() else cwd / path
        try:
            loaded = load_file_for(f"{name}={path}")
        except ConfigError:
            continue
        loaded.base_dir = cwd
        out.append(loaded)
    return out


def under_greengrass() -> bool:
    """Whether gatewayctl runs as (or inside) a Greengrass component, without importing the IPC SDK."""
    return bool(os.environ.get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT") and os.environ.get("SVCUID"))


def load(args: argparse.Namespace, statuses: dict[str, dict[str, Any]] | None = None) -> list[LoadedConfig]:
    """The configurations to check, by the order of preference in the module docstring; kept on ``args``."""
    if getattr(args, "config_files", None) or getattr(args, "config_dir", None):
        loaded = from_files(args)
    elif getattr(args, "deployed", False) or under_greengrass():
        loaded = from_deployment()
    else:
        loaded = from_processes(statuses or {})
    args.loaded_configs = loaded
    return loaded


def gather(args: argparse.Namespace) -> tuple[list[LoadedConfig], dict[str, dict[str, Any]]]:
    """The configurations and the components' statuses, each found with the help of the other when needed."""
    from gateway.cli.common import read_statuses

    explicit = bool(getattr(args, "config_files", None) or getattr(args, "config_dir", None)
                    or getattr(args, "deployed", False) or under_greengrass())
    if explicit:  # the configuration names the store, which holds the statuses
        loaded = load(args)
        return loaded, read_statuses(args)
    statuses = read_statuses(args)  # the running components name their configuration files
    return load(args, statuses), statuses
