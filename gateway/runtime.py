"""What every component entry point shares: arguments, logging, configuration, signals, reloads, health.

Configuration comes from ``--config FILE`` outside Greengrass and from the deployment (IPC) under it. A bad file
stops the start with one line per problem (exit code 2). A running component takes new configurations from SIGHUP
(file re-read) or from IPC deployments, which are validated before they apply (:mod:`gateway.ipc_config`).

**Applying a new configuration.** The runtime offers it on ``ctx.updates``. A component that applies changes
live takes it from the queue (the collectors do); one that has not taken it within :data:`TAKE_LIVE_S` is
restarted *inside the process*: its ``ctx.stop`` is set, its ``run`` returns, and ``run`` starts again with the
new configuration. Either way the process, its IPC connection and its validation subscription stay.

**Configuration revision.** :func:`gateway.revision.revision_of` (12 hex digits of the canonical configuration,
plus a keyed digest of its secrets when it has any). Each applied revision is logged once and written to the
component's status file ``<store.path>/status/<component>.json`` under ``config_revision`` (with ``config_state``,
``config_error`` and ``config_applied_ns``; status writers add :func:`gateway.status.status_fields`).

**What it writes is private.** The umask is 077 from the start, so the store, positions, status files, models, keys
and output files are 0600 in 0700 folders; log lines and status files pass through :mod:`gateway.redact`.

**Health.** The recipes use a ``Startup`` lifecycle: the nucleus keeps the component STARTING until it reports
``RUNNING`` (``GenericExternalService.startup``), which the runtime does once, when ``run`` first started. What
the nucleus does with ``ERRORED`` (``com.aws.greengrass.lifecyclemanager.Lifecycle``): it stops the process and
starts it again, and the third ERRORED within an hour makes the component BROKEN, not started again until the
next deployment. So the runtime reports it only when a restart is what is wanted:

- a **transient** failure (a retryable :class:`~gateway.errors.GatewayError`: stream manager not up yet, a peer
  down) is retried inside the process with backoff; the component stays RUNNING, the cause is logged (WARNING)
  and shown in the status file (``config_state`` ``RETRYING``, ``config_error``);
- any **other** failure of ``run`` is reported ERRORED and the process exits (code 1): the nucleus restarts it
  (a non-zero exit alone would make it ERRORED too, should the report not get through);
- a deployed configuration that is **invalid at start** (it passed no validation: the component was not running
  to validate it) is reported ERRORED and the process exits (code 2). Restarts cannot fix it, so the component
  goes BROKEN after three, which fails the deployment where it shows; the next deployment starts it again.
  A running component rejects an invalid configuration at validation, before it applies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from gateway.config import load_file
from gateway.errors import ConfigError, GatewayError
from gateway.fsutil import atomic_write
from gateway.redact import RedactingFormatter, scrub
from gateway.revision import revision_of
from gateway.secretrefs import refuse_outside_greengrass
from gateway.status import applied as _applied
from gateway.status import status_fields

if TYPE_CHECKING:  # the IPC SDK loads only under Greengrass
    from gateway.ipc import GreengrassIpc

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_ERRORED = 1
#: How long a component has to take a new configuration from ``ctx.updates`` before it is restarted in-process.
TAKE_LIVE_S = 3.0
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 60.0
State = Literal["RUNNING", "ERRORED"]


class _Errored(Exception):
    """Under Greengrass: ERRORED was reported and the process must end, for the nucleus to restart it."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Updates(asyncio.Queue[M]):
    """The updates queue; remembers that the component took an item (it applies changes live)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = asyncio.Event()

    def _get(self) -> M:
        self.taken.set()
        return super()._get()  # type: ignore[misc, no-any-return]  # typeshed leaves Queue._get out


@dataclass
class Context(Generic[M]):
    """Handed to a component's ``run``: its configuration, a stop event and a queue of accepted new configs."""

    name: str
    config: M
    stop: asyncio.Event
    updates: asyncio.Queue[M] = field(default_factory=_Updates)
    revision: str = ""


async def watch_deployments(ctx: Context[M], model: type[M]) -> GreengrassIpc:
    """Reject bad deployments before they apply; queue accepted ones on ``ctx.updates``; report RUNNING.

    Returns:
        The IPC connection; the caller closes it.
    """
    from gateway.ipc_config import connect_deployment  # loads the IPC SDK: only under Greengrass

    ipc, _config = await connect_deployment(ctx.name, model, ctx.updates.put_nowait, lambda: ctx.config)
    await ipc.update_state("RUNNING")
    return ipc


def setup_logging(level: str = "INFO", quiet_loggers: tuple[str, ...] = ()) -> None:
    """Log to stderr with secrets redacted; ``quiet_loggers`` (a component's noisy libraries, declared in
    gateway/components.py) log CRITICAL only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    for noisy in quiet_loggers:
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def fewer_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas.

    glibc gives each thread that allocates its own arena and keeps freed pages there. Every component moves batches
    through worker threads (stream appends and reads off the event loop, the publisher's AWS call pools), so after a
    burst each arena holds a batch worth of freed memory; a gateway process needs only a couple (RSS target 80 MB).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


# Python's cyclic collector runs a young collection every 700 new container objects: a collector making 100,000
# records a second ran it ~150 times a second, and every tenth of those went through the older generations too,
# where the start-up objects (modules, pydantic models, asyncio) are traversed again and again although they live as
# long as the process. Records hold no cycles, so the young threshold only delays freeing the rare cyclic garbage;
# raising it and freezing what start-up made took a Modbus scan of 500 floats from 7.9 to 6.9 us of CPU a value
# (6 interleaved rounds each, bench/bench_collector_modbus_cpu.py, issue 18). Reference counting frees everything
# else at once, as before.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Move what start-up made out of the collector's reach and collect young objects less often (see above)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def component_main(
    name: str,
    model: type[M],
    run: Callable[[Context[M]], Awaitable[None]],
    argv: list[str] | None = None,
    quiet_loggers: tuple[str, ...] = (),
) -> int:
    """Parse arguments, load and validate the configuration, run until SIGTERM/SIGINT. Returns the exit code."""
    parser = argparse.ArgumentParser(prog=name, description=f"{name} component of factory-edge-gateway")
    parser.add_argument("--config", type=Path, help="YAML/JSON configuration file (outside Greengrass)")
    parser.add_argument("--log-level", default=os.environ.get("FEG_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    # Everything a component writes (store, positions, status, models, keys, output files) is its own: 0600/0700.
    os.umask(0o077)
    setup_logging(args.log_level, quiet_loggers)
    fewer_malloc_arenas()
    config: M | None = None
    if args.config is not None:
        try:
            config = refuse_outside_greengrass(load_file(model, args.config), str(args.config))
        except ConfigError as exc:
            print(f"{name}: configuration rejected\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
    elif not os.environ.get("SVCUID"):
        print(f"{name}: no configuration. Fix: pass --config FILE (see `gatewayctl config defaults`), or run the "
              "component under Greengrass (or `gatewayctl dev run`)", file=sys.stderr)
        return EXIT_CONFIG
    tune_gc()  # after the imports and the configuration: what they made lives as long as the process
    try:
        asyncio.run(_Runner(name, model, run, args.config).serve(config))
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _Errored as exc:
        return exc.code
    return 0


class _Runner(Generic[M]):
    """Runs a component's ``run`` through configuration changes, failures and the final stop."""

    def __init__(
        self, name: str, model: type[M], run: Callable[[Context[M]], Awaitable[None]], path: Path | None
    ) -> None:
        self.name, self.model, self.run, self.path = name, model, run, path
        self.shutdown = asyncio.Event()
        self.pending: asyncio.Queue[M] = asyncio.Queue()
        self.config: M | None = None
        self.ipc: Any = None
        self.reported: State | None = None

    async def serve(self, config: M | None) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.shutdown.set)
        loop.add_signal_handler(signal.SIGINT, self.shutdown.set)
        if self.path is not None:
            loop.add_signal_handler(signal.SIGHUP, self._reload)
        else:
            from gateway.ipc_config import connect_deployment

            self.ipc, config = await connect_deployment(self.name, self.model, self.pending.put_nowait,
                                                        lambda: self.config)
        self.config = config
        log.info("%s: started (pid %d)", self.name, os.getpid())
        try:
            await self._loop()
        finally:
            if self.ipc is not None:
                self.ipc.close()
        log.info("%s: stopped", self.name)

    async def _loop(self) -> None:
        backoff_s = RETRY_FIRST_S
        while not self.shutdown.is_set():
            if self.config is None:  # the deployed configuration is invalid: restarts cannot fix it (BROKEN)
                await self._failed("the deployed configuration is invalid (see the log); deploy a valid one")
                raise _Errored(EXIT_CONFIG)
            ctx: Context[M] = Context(self.name, self.config, asyncio.Event(), revision=revision_of(self.config))
            self._applied(ctx.revision)
            task: asyncio.Task[None] = asyncio.ensure_future(self.run(ctx))
            await self.report("RUNNING")
            failure = await self._drive(ctx, task)
            if failure is None:
                backoff_s = RETRY_FIRST_S
                continue
            if self.ipc is None:  # outside Greengrass, fail loudly: whoever started us decides about restarts
                raise failure
            if not (isinstance(failure, GatewayError) and failure.retryable):
                await self._failed(_describe(failure))  # a restart is what fixes this one
                raise _Errored(EXIT_ERRORED)
            self._retrying(_describe(failure), backoff_s)  # transient: RUNNING still, the cause in status and log
            if not await self._next_config(backoff_s):
                return
            backoff_s = min(backoff_s * 2, RETRY_MAX_S)

    async def _drive(self, ctx: Context[M], task: asyncio.Task[None]) -> BaseException | None:
        """Feed accepted configurations to a running ``run``. Returns why it failed, or None once it stopped."""
        stopping = asyncio.create_task(self.shutdown.wait())
        # After a transient failure: RETRYING until this attempt has run for RETRY_FIRST_S without failing.
        survived = asyncio.create_task(asyncio.sleep(RETRY_FIRST_S if _applied.state == "RETRYING" else 0))
        try:
            while True:
                incoming = asyncio.create_task(self.pending.get())
                waits = {task, stopping, incoming} | ({survived} if _applied.state == "RETRYING" else set())
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if survived.done() and not task.done() and _applied.state == "RETRYING":
                    log.info("%s: configuration revision %s runs again (was: %s)", self.name, _applied.revision,
                             _applied.error)
                    _applied.state, _applied.error = "RUNNING", ""
                    self._write_status()
                if not incoming.done():
                    incoming.cancel()
                elif not await self._offer(ctx, task, incoming.result()):
                    await self._end(ctx, task, "restart")
                    return None
                if task.done():
                    if task.cancelled() or task.exception() is None:
                        self.shutdown.set()  # run returned on its own: the component finished
                        return None
                    return task.exception()
                if stopping.done():
                    await self._end(ctx, task, "stop")
                    return None
        finally:
            stopping.cancel()
            survived.cancel()

    async def _offer(self, ctx: Context[M], task: asyncio.Task[None], new: M) -> bool:
        """Hand ``new`` to the running component; True when it took it live, False when a restart must apply it."""
        updates = ctx.updates
        taken = updates.taken if isinstance(updates, _Updates) else asyncio.Event()
        taken.clear()
        updates.put_nowait(new)
        took = asyncio.create_task(taken.wait())
        await asyncio.wait({took, task}, timeout=TAKE_LIVE_S)
        took.cancel()
        self.config = new
        if taken.is_set():
            ctx.config, ctx.revision = new, revision_of(new)
            self._applied(ctx.revision, how="live")
            return True
        with contextlib.suppress(asyncio.QueueEmpty):
            updates.get_nowait()  # not taken: withdraw it, the restart brings it
        log.info("%s: restarting in-process to apply the new configuration", self.name)
        return False

    async def _end(self, ctx: Context[M], task: asyncio.Task[None], why: str) -> None:
        ctx.stop.set()
        try:
            await task
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a component failing while it stops must not stop the runtime
            log.warning("%s: failed while stopping for a %s: %s", self.name, why, _describe(exc))
        return None

    async def _next_config(self, wait_s: float | None) -> bool:
        """Wait for a new configuration, for ``wait_s`` (a retry), or for the stop. False when stopping."""
        incoming = asyncio.create_task(self.pending.get())
        stopping = asyncio.create_task(self.shutdown.wait())
        await asyncio.wait({incoming, stopping}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if incoming.done():
            self.config = incoming.result()
        else:
            incoming.cancel()
        return not self.shutdown.is_set()

    async def _failed(self, reason: str) -> None:
        log.error("%s: cannot run configuration revision %s: %s; reporting ERRORED, for the nucleus to restart the "
                  "component", self.name, _applied.revision or "(none)", reason)
        _applied.state, _applied.error = "ERRORED", reason
        self._write_status()
        await self.report("ERRORED")

    def _retrying(self, reason: str, wait_s: float) -> None:
        if reason != _applied.error:  # once per cause, not once per retry
            log.warning("%s: configuration revision %s cannot run yet: %s; retrying in-process (next in %g s, "
                        "backing off to %g s) and staying RUNNING", self.name, _applied.revision or "(none)", reason,
                        wait_s, RETRY_MAX_S)
        _applied.state, _applied.error = "RETRYING", reason
        self._write_status()

    def _applied(self, revision: str, how: str = "start") -> None:
        if _applied.state == "RETRYING" and revision == _applied.revision:
            return  # a retry: RETRYING with its cause until the run survived RETRY_FIRST_S (_drive)
        if revision != _applied.revision or _applied.state != "RUNNING":
            log.info("%s: applied configuration revision %s (%s)", self.name, revision, how)
        _applied.revision, _applied.state, _applied.error = revision, "RUNNING", ""
        _applied.applied_ns = time.time_ns()
        self._write_status()

    async def report(self, state: State) -> None:
        """Report the state to the nucleus (nothing outside Greengrass). RUNNING only once: RUNNING reported from
        RUNNING is an invalid transition the nucleus ignores (``Lifecycle.reportState``)."""
        if self.ipc is None or (state == "RUNNING" and self.reported == "RUNNING"):
            return
        try:
            await self.ipc.update_state(state)
        except GatewayError as exc:
            log.warning("%s: could not report %s: %s", self.name, state, exc)
            return
        self.reported = state

    def _write_status(self) -> None:
        """Merge the configuration keys into the status file (the component's own writer keeps them there)."""
        store = getattr(self.config, "store", None)
        folder = Path(str(getattr(store, "path", "data"))) / "status"
        path = folder / f"{self.name}.json"
        try:
            status = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            status = {}
        status.update(component=self.name, pid=os.getpid(), updated_ns=time.time_ns(), **status_fields())
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(scrub(status)).encode(), sync=False)
        except OSError as exc:
            log.warning("%s: cannot write status file %s: %s", self.name, path, exc)

    def _reload(self) -> None:
        assert self.path is not None
        try:
            new = refuse_outside_greengrass(load_file(self.model, self.path), str(self.path))
        except ConfigError as exc:
            log.error("%s: new configuration rejected, the running one stays:\n%s", self.name, exc)
            return
        log.info("%s: configuration reloaded from %s", self.name, self.path)
        self.pending.put_nowait(new)


def _describe(exc: BaseException | None) -> str:
    return str(exc) if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
