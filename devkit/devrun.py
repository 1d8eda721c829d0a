"""``gatewayctl dev run``: the built Greengrass components, run on this machine the way a nucleus runs them.

From ``greengrass-build/`` it takes every component the bundle depends on (or those named), picks each recipe's
manifest for this platform, unpacks the artifacts, merges the configuration (recipe defaults + ``--config``
overrides), interpolates the recipe variables (:mod:`devkit.devrun_recipe`), then runs ``Install`` and ``Run``
as ``sh -c`` in the component's work folder with the environment a nucleus gives:

``SVCUID`` and ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (one token per component), ``AWS_GG_NUCLEUS_DOMAIN_SOCKET_
FILEPATH_FOR_COMPONENT``, ``AWS_IOT_THING_NAME``, ``AWS_REGION``, ``GGC_VERSION``, plus ``STREAM_MANAGER_SERVER_PORT``
(what a recipe's ``Setenv`` passes on a core whose stream manager port was changed) and the recipe's ``Setenv``.

Around them it serves what the nucleus would: one Greengrass IPC endpoint (:class:`IpcServer`: configuration,
updates and validation, UpdateState, pub/sub, PublishToIoTCore forwarded to an MQTT broker or a JSON-lines file,
authorised by each recipe's ``accessControl``) and one stream manager (:class:`StreamManagerService`, streams kept
under the root). Each component's state follows the nucleus's state machine
(:mod:`devkit.devrun_lifecycle`, after ``Lifecycle`` and ``GenericExternalService``): under ``Startup`` it
is STARTING until it reports RUNNING (ERRORED after the Startup timeout), under ``Run`` RUNNING once started; an
ERRORED, reported or from a failed exit, stops the process and starts it again at once, and the third error
within the error reset time (an hour) makes it BROKEN: stopped, and not started again until a configuration is
deployed to it (``gatewayctl dev config``). Ctrl-C or SIGTERM stops every process (SIGTERM to its process group, SIGKILL
after the Shutdown timeout). ``gatewayctl dev config`` deploys a configuration change through the control socket
(:mod:`devkit.devrun_control`): it is validated by the component first, as a deployment is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit import devrun_recipe as rcp
from devkit.devrun_control import ControlServer, IotCoreForwarder
from devkit.devrun_lifecycle import (
    DEFAULT_ERROR_RESET_TIME_S,
    MAXIMUM_CONTINUAL_ERROR,
    ComponentLifecycle,
    Kind,
    Running,
)
from devkit.ipc_server import IpcServer
from devkit.stream_manager_service import StreamManagerService
from gateway.components import of_kind
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

PROVIDED = {"aws.greengrass.StreamManager"}  # served by the dev run itself
NOT_PROVIDED_NOTE = {
    "aws.greengrass.TokenExchangeService": "not run: AWS SDK calls use this machine's own credentials",
}
GGC_VERSION = "2.12.0-devrun"


@dataclass
class Options:
    """What ``gatewayctl dev run`` was asked for."""

    build: Path = Path("greengrass-build")
    root: Path = Path(".run/devrun")
    config: Path | None = None
    thing_name: str = field(default_factory=lambda: f"devrun-{socket.gethostname()}")
    mqtt: str | None = None
    iot_file: Path | None = None
    components: list[str] = field(default_factory=list)
    stream_manager_port: int = 8088
    region: str = field(default_factory=lambda: os.environ.get("AWS_REGION", "us-east-1"))


def select(recipes: dict[str, tuple[Path, dict[str, Any]]], wanted: list[str]) -> list[str]:
    """The components to run in start order: the named ones, else every one some bundle depends on."""
    with_artifacts = {n for n, (_p, r) in recipes.items() if any(m.get("Artifacts") for m in r.get("Manifests") or [])}
    if wanted:
        unknown = sorted(set(wanted) - with_artifacts)
        if unknown:
            raise ConfigError(f"--component {', '.join(unknown)}: not a built component with artifacts",
                              fix=f"choose from {', '.join(sorted(with_artifacts))}")
        chosen = set(wanted)
    else:
        chosen = with_artifacts
    ordered: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in ordered or name not in chosen:
            return
        if name in trail:
            raise ConfigError(f"dependency cycle: {' -> '.join([*trail, name])}", fix="fix ComponentDependencies")
        for dep in (recipes[name][1].get("ComponentDependencies") or {}):
            visit(dep, (*trail, name))
        ordered.append(name)

    for name in sorted(chosen):
        visit(name, ())
    return ordered


class DevRun:
    """One dev run: servers, components and their supervision. Use :meth:`run` (until stopped)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.root = options.root.resolve()
        self.build = options.build.resolve()
        self.stopping = asyncio.Event()
        self.components: dict[str, Running] = {}
        self.ipc: IpcServer | None = None
        self.stream_manager: StreamManagerService | None = None
        self.iot = IotCoreForwarder(options.mqtt, options.iot_file or self.root / "iot-core.jsonl")
        self.control = ControlServer(_short_socket(self.root / "control.sock"), self)
        self._tasks: list[asyncio.Task[None]] = []
        self.interpolate = False  # the nucleus's interpolateComponentConfiguration, from the overrides

    # ---- set-up ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read recipes and overrides, unpack artifacts, interpolate every lifecycle step (errors before start)."""
        recipes = rcp.load_recipes(self.build)
        names = select(recipes, self.options.components)
        overrides = rcp.read_overrides(self.options.config)
        self.interpolate = rcp.nucleus_interpolates(overrides.pop(rcp.NUCLEUS, None))
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(f"{self.options.config}: configuration for {', '.join(unknown)}, which this dev run "
                              "does not run", fix=f"use one of {', '.join(names)}")
        for name in names:
            override = overrides.get(name)
            if override is None and name in {spec.name for spec in of_kind("cli")}:
                # a dev run is not a core: the command and its venv go under the run's root, not /usr/local
                override = {"installDir": str(self.root / "cli"), "commandPath": str(self.root / "bin" / "gatewayctl")}
            component = rcp.prepare(name, recipes, self.build, self.root, override)
            lifecycle = component.manifest.get("Lifecycle") or {}
            reset_s = float(lifecycle.get("errorResetTime") or DEFAULT_ERROR_RESET_TIME_S)
            kind: Kind = "Startup" if lifecycle.get("Startup") is not None else "Run"
            self.components[name] = Running(component, uuid.uuid4().hex,
                                            ComponentLifecycle(name, kind=kind, error_reset_s=reset_s))
        for running in self.components.values():
            comp = running.component
            for dep, dep_kind in comp.dependencies.items():
                if dep in self.components or dep in PROVIDED:
                    continue
                note = NOT_PROVIDED_NOTE.get(dep, "not run by gatewayctl dev run")
                log.warning("%s: %s dependency %s %s", comp.name, dep_kind, dep, note)
            for step in rcp.STEPS:
                self._interpolated(running, step)  # fail now, naming recipe and key, not mid-run

    def _interpolated(self, running: Running, name: str) -> rcp.Step | None:
        comp = running.component
        step = comp.step(name)
        if step is None:
            return None
        others = {n: r.component for n, r in self.components.items()}
        where = f"Manifests[{comp.manifest_index}].Lifecycle.{name}"

        def interp(text: str, key: str) -> str:
            return rcp.interpolate(text, f"{where}.{key}", comp, others, self.options.thing_name, self.root)

        return rcp.Step(interp(step.script, "Script"), step.timeout_s,
                        {k: interp(v, f"Setenv.{k}") for k, v in step.setenv.items()})

    def environment(self, running: Running, step: rcp.Step) -> dict[str, str]:
        """The environment a nucleus gives a component's lifecycle process."""
        assert self.ipc is not None and self.stream_manager is not None
        # the nucleus's own Python settings are not the component's: its recipe sets PYTHONPATH where it needs one
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
        env.update(
            SVCUID=running.token,
            AWS_CONTAINER_AUTHORIZATION_TOKEN=running.token,
            AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT=self.ipc.socket_path,
            AWS_IOT_THING_NAME=self.options.thing_name,
            AWS_REGION=self.options.region,
            GGC_VERSION=GGC_VERSION,
            STREAM_MANAGER_SERVER_PORT=str(self.stream_manager.port),
        )
        env.update(step.setenv)
        return env

    # ---- running --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the servers and every component (in dependency order); returns once all were launched."""
        self.prepare()
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        await self.iot.start()
        self.stream_manager = StreamManagerService(
            self.root / "stream-manager", port=self.options.stream_manager_port,
            auth_tokens=[r.token for r in self.components.values()],
        )
        await self.stream_manager.start()
        self.ipc = IpcServer(
            _short_socket(self.root / "ipc.socket"),
            {r.token: n for n, r in self.components.items()},
            access_control={n: r.component.access_control for n, r in self.components.items()},
            iot_core_sink=self.iot.publish,
            thing_name=self.options.thing_name,
            interpolate_component_configuration=self.interpolate,
        )
        self.ipc.lifecycles.update({n: r.lifecycle for n, r in self.components.items()})
        for name, running in self.components.items():
            self.ipc.set_configuration(name, running.component.config)
        await self.ipc.start()
        await self.control.start()
        self._write_state()
        for running in self.components.values():
            self._tasks.append(asyncio.create_task(self._supervise(running), name=running.component.name))
        log.info("dev run: %d component(s) under %s; IPC %s, stream manager 127.0.0.1:%d, IoT Core -> %s",
                 len(self.components), self.root, self.ipc.socket_path, self.stream_manager.port, self.iot.target)

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM (or a ``stop`` on the control socket); 0 when every component stayed healthy."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.start()
            await self.stopping.wait()
        finally:
            await self.stop()
        return 1 if any(r.state == "BROKEN" for r in self.components.values()) else 0

    async def stop(self) -> None:
        """Stop every component (reverse start order), then the servers."""
        self.stopping.set()
        for task in reversed(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        await self.control.stop()
        if self.ipc is not None:
            await self.ipc.stop()
        if self.stream_manager is not None:
            await self.stream_manager.stop()
        await self.iot.stop()
        (self.root / "devrun.json").unlink(missing_ok=True)

    async def _supervise(self, running: Running) -> None:
        """Drive one component through the nucleus's states until the dev run stops (Lifecycle.startStateTransition:
        NEW installs, INSTALLED starts, ERRORED stops and starts again, BROKEN waits for a deployment)."""
        lc = running.lifecycle
        while not self.stopping.is_set():
            lc.changed.clear()
            if lc.state == "NEW":
                await self._install(running)
            elif lc.state == "INSTALLED":
                await self._start(running)
            else:  # BROKEN or FINISHED: nothing runs until a deployment (redeployed) or the stop
                await _first(lc.changed.wait(), self.stopping.wait())
        if lc.state not in ("BROKEN", "FINISHED"):
            lc.stopping()
            lc.stopped(restart=False)

    async def _install(self, running: Running) -> None:
        lc, name = running.lifecycle, running.component.name
        install = self._interpolated(running, "Install")
        code = 0 if install is None else await self._step(running, "Install", install)
        if self.stopping.is_set():
            return
        if code == 0:
            lc.installed()
            return
        log.error("%s: Install failed (exit %s): see %s", name, code, self._log_path(name))
        lc.report("ERRORED", f"Install exit {code}")
        if lc.state == "ERRORED":  # Lifecycle.handleCurrentStateErrored from NEW: install again
            lc.reinstall()

    async def _start(self, running: Running) -> None:
        """Start the component's Startup or Run process and watch it until it must stop (ERRORED, BROKEN,
        FINISHED, the dev run stops); then stop it (Shutdown step, then SIGTERM/SIGKILL) and restart it after an
        ERRORED."""
        lc, comp = running.lifecycle, running.component
        step = self._interpolated(running, lc.kind)
        generation = lc.starting()
        if step is None:  # GenericExternalService: no Startup and no Run is "nothing done": FINISHED
            lc.report("FINISHED", "nothing to run")
            return
        process = await self._launch(running, lc.kind, step)
        exited = asyncio.create_task(process.wait())
        loop = asyncio.get_running_loop()
        # Startup: ERRORED when still STARTING after its timeout (120 s by default); Run: only with a Timeout.
        deadline = loop.time() + step.timeout_s if step.timeout_s is not None else None
        while lc.state in ("STARTING", "RUNNING") and not self.stopping.is_set():
            lc.changed.clear()
            watching = lc.state == "STARTING" if lc.kind == "Startup" else not exited.done()
            timeout = max(0.0, deadline - loop.time()) if deadline is not None and watching else None
            waits: list[Awaitable[Any]] = [lc.changed.wait(), self.stopping.wait()]
            if not exited.done():
                waits.append(asyncio.shield(exited))
            if not await _first(*waits, timeout=timeout):
                if lc.kind == "Startup":
                    lc.startup_timed_out(generation)
                else:
                    lc.report("ERRORED", "RUN_TIMEOUT")
                log.error("%s: %s still %s after its timeout of %s s", comp.name, lc.kind, lc.state, step.timeout_s)
            elif exited.done() and running.last_exit is None:
                running.last_exit = process.returncode
                lc.exited(process.returncode, generation)
        if not exited.done():
            lc.stopping()
            shutdown = self._interpolated(running, "Shutdown")
            if shutdown is not None:
                await self._step(running, "Shutdown", shutdown)
            await _terminate(process, rcp.DEFAULT_TIMEOUT_S["Shutdown"])
            await exited
        running.process, running.pid = None, None
        if lc.state == "BROKEN":
            log.error("%s: BROKEN after %d errors within %g s (last: %s); not started again until a configuration is "
                      "deployed to it (gatewayctl dev config); see %s", comp.name, MAXIMUM_CONTINUAL_ERROR,
                      lc.error_reset_s, lc.reason, self._log_path(comp.name))
        elif lc.state in ("ERRORED", "STOPPING") and not self.stopping.is_set():
            log.warning("%s: ERRORED (%s): stopped and started again, as the nucleus does", comp.name, lc.reason)
            lc.stopping()
            lc.stopped(restart=True)

    async def _launch(self, running: Running, step_name: str, step: rcp.Step) -> asyncio.subprocess.Process:
        comp = running.component
        with open(self._log_path(comp.name), "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {step_name}: {step.script}\n".encode())
            out.flush()
            process = await asyncio.create_subprocess_exec(
                "sh", "-c", step.script, cwd=comp.work_path, env=self.environment(running, step),
                stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        running.process, running.pid, running.last_exit = process, process.pid, None
        return process

    async def _step(self, running: Running, step_name: str, step: rcp.Step) -> int | None:
        """Run a step that ends by itself (Install, Shutdown) to its end or its timeout (None)."""
        comp = running.component
        process = await self._launch(running, step_name, step)
        exited = asyncio.create_task(process.wait())
        try:
            # Shutdown runs while the dev run stops: only Install is cut short by the stop.
            stop = [self.stopping.wait()] if step_name != "Shutdown" else []
            await _first(exited, *stop, timeout=step.timeout_s)
            if not exited.done():
                if not self.stopping.is_set():
                    log.error("%s: %s timed out after %s s", comp.name, step_name, step.timeout_s)
                await _terminate(process, rcp.DEFAULT_TIMEOUT_S["Shutdown"])
                return None
            return process.returncode
        finally:
            running.process, running.pid = None, None

    def _log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def status(self) -> dict[str, Any]:
        """What ``gatewayctl dev status`` shows."""
        reported = self.ipc.states if self.ipc is not None else {}
        return {
            "root": str(self.root),
            "thing_name": self.options.thing_name,
            "ipc_socket": self.ipc.socket_path if self.ipc else None,
            "stream_manager_port": self.stream_manager.port if self.stream_manager else None,
            "iot_core": self.iot.target,
            "iot_core_published": self.iot.count,
            "components": {
                n: {"version": r.component.version, "state": r.state, "reported_state": reported.get(n),
                    "pid": r.pid, "restarts": r.restarts, "last_exit": r.last_exit,
                    "work_path": str(r.component.work_path), "log": str(self._log_path(n))}
                for n, r in self.components.items()
            },
        }

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "control_socket": self.control.path, **self.status()}
        (self.root / "devrun.json").write_text(json.dumps(state, indent=1))


async def _first(*waits: Awaitable[Any], timeout: float | None = None) -> bool:
    """Wait until one of ``waits`` is done (the rest are cancelled); False when ``timeout`` passed first."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return bool(done)


async def _terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
            return
        except asyncio.TimeoutError:
            continue


def _short_socket(path: Path) -> str:
    """Unix socket paths are limited to 107 bytes; a deep root gets its socket under /tmp instead."""
    if len(str(path)) < 100:
        return str(path)
    return f"/tmp/feg-devrun-{uuid.uuid4().hex[:12]}.sock"
