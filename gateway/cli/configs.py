"""Which configurations gatewayctl looks at, and for which component each is.

In order of preference: files given with ``--config``/``--config-dir``; the Greengrass deployment (``--deployed``,
or by default when gatewayctl itself runs under Greengrass), read over IPC with GetConfiguration of every component;
otherwise the files the running components were started with (``--config`` on their command line, found through the
pid in their status file), so ``gatewayctl doctor`` needs no arguments on a gateway run outside Greengrass.

A status file is data, not an instruction: anyone who can write the store can forge one, and a configuration names
hosts that doctor then connects to as whoever runs it (often root). So the last way follows a status file only when
every link of the chain is as trustworthy as gatewayctl itself (:func:`untrusted_process`, :func:`untrusted_file`):

- the status file and the configuration file are regular files owned by root or the user running gatewayctl, not
  writable by group or others, in a folder with the same owners that group and others cannot write (or sticky);
- the process named by the pid is owned by root or that user, and its command line is the entry point of the very
  component the status file is for: ``-m components.<entry>.main`` or a ``components/<entry>/main.py`` script that
  passes the file rule above.

Anything else is reported as "not followed" with the reason, and doctor reads no configuration for that component
(pass ``--config``). Components run as another user (a service account) are therefore not followed when someone else
runs doctor: run it as that user, or pass the files. Under Greengrass (``ggc_user``) the configuration comes from the
deployment instead: ``sudo gatewayctl`` borrows a running component's IPC access (:mod:`gateway.cli.core`), which
makes the deployment the source, and the store paths are relative to each component's work folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import core_setup, read_statuses
from gateway.cli.core import ENTRY_POINTS
from gateway.components import config_models
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
    how: str = ""  # how the component was decided: "given", "from the file name", "the only model it fits", ...

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
    return config_models()  # imports the models (pydantic) on first use


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
    """The component a configuration file is for (:func:`recognise_how` without the reason)."""
    return recognise_how(path, data)[0]


def recognise_how(path: Path, data: Any) -> tuple[str, str]:
    """The component a configuration file is for, and how it was decided: from its name, else among the models that
    have every top-level key it uses, the only one it fits, else the one it fits with fewest problems.

    Raises:
        ConfigError: two or more models fit equally well; the message lists them, the fix says how to name one.
    """
    known = components()
    stem = _norm(path.stem)
    by_name = [c for c in known if _norm(c.split(".")[-1]) in stem or stem in _norm(c.split(".")[-1])]
    if len(by_name) == 1:
        return by_name[0], "from the file name"
    candidates = by_name or list(known)
    keys = set(data) if isinstance(data, dict) else set()
    candidates = [c for c in candidates if keys <= set(known[c].model_fields)] or candidates
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
    if len(winners) == 1 and best == 0:
        return winners[0], "the only model it fits"
    if len(winners) == 1:
        others = [e for n, e in errors.items() if n != winners[0]]
        why = f"{best} problem(s), the others {min(others)} or more" if others else "the only one with its keys"
        return winners[0], f"the model it fits best: {why}; give --component if it is another"
    raise ConfigError(f"cannot tell which component {path} configures: it could be {', '.join(winners)}",
                      fix=f"name it: gatewayctl config check --component {winners[0]} {path}, or "
                      f"--config {winners[0]}={path}")


def load_file_for(spec: str, component: str | None = None) -> LoadedConfig:
    """Load ``[COMPONENT=]FILE``; a bad file is a result with problems, an unreadable one raises ConfigError."""
    from gateway.config import read_file, validate

    name, sep, file = spec.partition("=")
    if not sep or "/" in name:
        name, file = component or "", spec
    path = Path(file)
    data = read_file(path)
    name, how = (_resolve_name(name), "given") if name else recognise_how(path, data)
    try:
        config = validate(components()[name], data, origin=str(path))
    except ConfigError as exc:
        return LoadedConfig(name, str(path), problems=exc.problems or [str(exc)], raw=data, how=how)
    return LoadedConfig(name, str(path), config, raw=data, how=how)


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


def _trusted_uid(uid: int) -> bool:
    return uid in (0, os.geteuid())


def untrusted_file(path: Path) -> str | None:
    """Why ``path`` (after symlinks) may have been written by someone else, or None when it cannot have been."""
    try:
        real = path.resolve(strict=True)
        st, folder = real.stat(), real.parent.stat()
    except (OSError, RuntimeError) as exc:
        return f"{path} cannot be checked ({type(exc).__name__})"
    if not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file"
    if not _trusted_uid(st.st_uid):
        return f"{real} is owned by uid {st.st_uid}, neither root nor you"
    if st.st_mode & 0o022:
        return f"{real} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if not _trusted_uid(folder.st_uid) or (folder.st_mode & 0o022 and not folder.st_mode & stat.S_ISVTX):
        return f"its folder {real.parent} can be written by another user, who could swap the file"
    return None


def untrusted_process(pid: int, component: str) -> tuple[str | None, list[str], Path]:
    """(why the process is not ``component``'s trustworthy entry point or None, its argv, its working directory).

    Raises OSError when there is no such process (a stale status file: nothing to say).
    """
    proc = Path(f"/proc/{pid}")
    owner = proc.stat().st_uid
    argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    cwd = (proc / "cwd").resolve()
    if not _trusted_uid(owner):
        return f"pid {pid} runs as uid {owner}, neither root nor you", argv, cwd
    entry = ENTRY_POINTS.get(component)
    script = next((a for a in argv[1:] if not a.startswith("-")), "")
    if entry and "-m" in argv[1:-1] and argv[argv.index("-m", 1) + 1] == f"components.{entry}.main":
        return None, argv, cwd
    if entry and script and Path(script).parts[-3:] == ("components", entry, "main.py"):
        path = Path(script) if Path(script).is_absolute() else cwd / script
        problem = untrusted_file(path)
        return (f"its entry point {problem}" if problem else None), argv, cwd
    return f"pid {pid} is not running {component}'s entry point (components/{entry or '?'}/main.py)", argv, cwd


def from_processes(statuses: dict[str, dict[str, Any]]) -> list[LoadedConfig]:
    """The ``--config`` files of the running components (Linux /proc), relative to their working directory, for
    status files, processes and files that pass the checks in the module docstring."""
    out = []
    for name, status in statuses.items():
        try:
            pid = int(status.get("pid") or 0)
        except (TypeError, ValueError):
            continue
        if pid <= 0 or name not in components():
            continue
        try:
            problem, argv, cwd = untrusted_process(pid, name)
        except OSError:
            continue  # not running, or not ours to look at
        if "--config" not in argv[:-1]:
            continue
        path = Path(argv[argv.index("--config") + 1])
        path = path if path.is_absolute() else cwd / path
        status_path = status.get("_path")
        problem = problem or (untrusted_file(Path(status_path)) if isinstance(status_path, str) else None)
        problem = problem and f"status file {status_path}: {problem}"
        problem = problem or (f"configuration {untrusted_file(path)}" if untrusted_file(path) else None)
        if problem:
            out.append(LoadedConfig(name, f"status file {status_path} (pid {pid})", problems=[
                f"{problem}: the configuration it points at ({path}) was not followed (a status file is data anyone "
                "who can write the store may forge); pass --config COMPONENT=FILE"]))
            continue
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
        work = Path(getattr(args, "greengrass_root", None) or "/greengrass/v2") / "work"
        for c in loaded:  # a component's store.path is relative to its work folder, where the nucleus runs it
            c.base_dir = work / c.component
    else:
        loaded = from_processes(statuses or {})
    args.loaded_configs = loaded
    return loaded


def gather(args: argparse.Namespace) -> tuple[list[LoadedConfig], dict[str, dict[str, Any]]]:
    """The configurations and the components' statuses, each found with the help of the other when needed."""
    core_setup(args)  # next to a core: refuse unreadable files in one line, or borrow a component's IPC access
    explicit = bool(getattr(args, "config_files", None) or getattr(args, "config_dir", None)
                    or getattr(args, "deployed", False) or under_greengrass())
    if explicit:  # the configuration names the store, which holds the statuses
        loaded = load(args)
        return loaded, read_statuses(args)
    statuses = read_statuses(args)  # the running components name their configuration files
    return load(args, statuses), statuses
