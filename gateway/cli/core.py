"""gatewayctl next to a Greengrass core: where the components' files are, and their IPC and stream manager access.

On a core every factoryedge component runs as its own user (``ggc_user``), in its work folder
``<greengrass root>/work/<component>``; its store (``store.path``, ``data`` by default) is relative to that folder,
and everything it writes is 0600 in 0700 folders (docs/security.md). A technician therefore runs ``sudo gatewayctl``.
As root, gatewayctl reads the status files directly and, for what needs the nucleus, borrows the credentials of a
running factoryedge component from ``/proc/<pid>/environ``: its IPC socket and token
(``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``, ``SVCUID``), its stream manager token
(``AWS_CONTAINER_AUTHORIZATION_TOKEN``) and port (``STREAM_MANAGER_SERVER_PORT``, 8088 when unset). Only root and
the component's own user can read that file, so no secret reaches anyone who did not already hold it. With them,
``--deployed`` works (GetConfiguration of any component needs no authorisation) and so does stream manager with
client authentication. They are put into gatewayctl's own environment, where :class:`gateway.ipc.GreengrassIpc`
and the stream manager SDK read them; they are never printed.

A process is borrowed from only when every link is trustworthy (as in :mod:`gateway.cli.configs`): the Greengrass
root named (``--greengrass-root``, default ``/greengrass/v2``) and its ``work`` folder are not writable by group or
others; the process's working directory is ``<root>/work/<component>``; it is owned by root, the user running
gatewayctl, or the owner of that work folder (the component's user, which the nucleus made it for); its command line
is the component's entry point (``-m components.<entry>.main``); and the IPC socket it names is a socket owned by
root, the root folder's owner or the process's owner. Anything else is skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from gateway.components import COMPONENTS
from gateway.errors import ConfigError

DEFAULT_ROOT = "/greengrass/v2"
PREFIX = "factoryedge."
SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
BORROWED = (SOCKET_ENV, "SVCUID", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "STREAM_MANAGER_SERVER_PORT")
# Component -> its folder under components/ (the entry point components/<entry>/main.py).
ENTRY_POINTS = {spec.name: spec.entry for spec in COMPONENTS if spec.entry}


@dataclass(frozen=True)
class Borrowed:
    """A running component's credentials (values never shown: ``repr`` names the component and pid only)."""

    component: str
    pid: int
    env: dict[str, str]

    def __repr__(self) -> str:
        return f"Borrowed({self.component!r}, pid {self.pid})"

    @property
    def stream_manager_port(self) -> int:
        port = self.env.get("STREAM_MANAGER_SERVER_PORT", "")
        return int(port) if port.isdigit() else 8088


def work_folders(root: Path) -> list[Path]:
    """``<root>/work/factoryedge.*`` (empty when there is no such root or it cannot be listed)."""
    try:
        return sorted(p for p in (root / "work").iterdir() if p.name.startswith(PREFIX) and p.is_dir())
    except OSError:
        return []


def _sudo_line(root: Path, argv: list[str]) -> str:
    args = " ".join(argv) if argv else "status"
    option = "" if str(root) == DEFAULT_ROOT or "--greengrass-root" in argv else f"--greengrass-root {root} "
    return f"sudo gatewayctl {option}{args}"


def unreadable(root: Path, argv: list[str]) -> ConfigError | None:
    """The one error to show when this user cannot read the components' files under ``root`` (None when it can)."""
    work = root / "work"
    if not os.path.isdir(root):
        return None
    if not os.access(root, os.X_OK):  # a private Greengrass root: whether it holds our components cannot be seen
        blocked: Path | None = root
    elif not os.path.isdir(work):
        return None
    elif not os.access(work, os.R_OK | os.X_OK):
        blocked = work
    else:
        folders = [f for f in work_folders(root) if f.name in ENTRY_POINTS]  # those with a store (not the Cli)
        blocked = next((f / "data" for f in folders if not os.access(f, os.X_OK)
                        or ((f / "data").exists() and not os.access(f / "data", os.R_OK | os.X_OK))), None)
    if blocked is None:
        return None
    try:
        owner = blocked.stat().st_uid if os.access(blocked.parent, os.X_OK) else blocked.parent.stat().st_uid
    except OSError:
        owner = -1
    who = _user(owner)
    return ConfigError(
        f"cannot read {blocked}: the components' status, configuration and streams belong to {who} (0700, as "
        "docs/security.md wants)",
        fix=f"run {_sudo_line(root, argv)} (gatewayctl reads them as root and borrows a running component's IPC "
        "and stream manager access; nothing is loosened)")


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name}"
    except (KeyError, ImportError):
        return f"uid {uid}" if uid >= 0 else "another user"


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o022) and not st.st_mode & stat.S_ISVTX


def untrusted(pid: int, component: str, root: Path) -> str | None:
    """Why ``pid`` is not ``component``'s own process under ``root`` (None when every check in the module doc holds).

    Raises OSError when the process is gone or cannot be inspected.
    """
    root = root.resolve()
    root_st, work_st = root.stat(), (root / "work").stat()
    if _writable_by_others(root_st) or _writable_by_others(work_st):
        return f"{root} or its work folder is writable by group or others"
    folder = root / "work" / component
    owners = {0, os.geteuid(), root_st.st_uid, folder.stat().st_uid}
    proc = Path(f"/proc/{pid}")
    owner = proc.stat().st_uid
    if owner not in owners:
        return f"pid {pid} runs as uid {owner}, not as root, you or the owner of {folder}"
    if (proc / "cwd").resolve() != folder.resolve():
        return f"pid {pid} does not run in {folder}"
    argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    entry = ENTRY_POINTS.get(component)
    if not entry or "-m" not in argv[1:-1] or argv[argv.index("-m", 1) + 1] != f"components.{entry}.main":
        return f"pid {pid} is not running {component}'s entry point (-m components.{entry or '?'}.main)"
    return None


def _socket_ok(path: str, allowed: set[int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid in allowed


def _candidates(folder: Path) -> list[int]:
    """Pids of processes whose working directory is ``folder`` (the status file's pid first, when it has one)."""
    import json

    first: list[int] = []
    status = folder / "data" / "status" / f"{folder.name}.json"
    try:
        pid = json.loads(status.read_bytes()).get("pid")
        if isinstance(pid, int) and pid > 0:
            first.append(pid)  # only a hint: untrusted() checks it like any other
    except (OSError, ValueError, AttributeError):
        pass
    found = []
    target = str(folder.resolve())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == target:
                    found.append(int(entry.name))
            except OSError:
                continue
    return list(dict.fromkeys([*first, *found]))


def borrow(root: Path) -> Borrowed | None:
    """The credentials of the first running factoryedge component under ``root`` that passes every check."""
    for folder in work_folders(root):
        for pid in _candidates(folder):
            try:
                if untrusted(pid, folder.name, root) is not None:
                    continue
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
            picked = {k: env[k] for k in BORROWED if env.get(k)}
            allowed = {0, root.stat().st_uid, Path(f"/proc/{pid}").stat().st_uid}
            if picked.get("SVCUID") and _socket_ok(picked.get(SOCKET_ENV, ""), allowed):
                return Borrowed(folder.name, pid, picked)
    return None


def use(borrowed: Borrowed) -> None:
    """Make ``borrowed`` this process's Greengrass identity (read from the environment by IPC and stream manager)."""
    for key in BORROWED:
        if key in borrowed.env:
            os.environ[key] = borrowed.env[key]
