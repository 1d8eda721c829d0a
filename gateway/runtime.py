"""What every component entry point shares: arguments, logging, configuration, signals, reloads.

Configuration comes from ``--config FILE`` outside Greengrass and from the deployment (IPC) under it. A bad
configuration stops the start with one line per problem (exit code 2); nothing starts half-configured. A running
component takes new configurations from SIGHUP (file re-read) or from IPC updates, validated before they apply.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

from gateway.config import load_file
from gateway.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

EXIT_CONFIG = 2


@dataclass
class Context(Generic[M]):
    """Handed to a component's ``run``: its configuration, a stop event and a queue of accepted new configs."""

    name: str
    config: M
    stop: asyncio.Event
    updates: asyncio.Queue[M] = field(default_factory=asyncio.Queue)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # asyncua logs a full traceback at ERROR on every network cut; our reconnect loop reports the state change once.
    for noisy in ("asyncua", "pymodbus", "Pyro4"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def component_main(
    name: str,
    model: type[M],
    run: Callable[[Context[M]], Awaitable[None]],
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, load and validate the configuration, run until SIGTERM/SIGINT. Returns the exit code."""
    parser = argparse.ArgumentParser(prog=name, description=f"{name} component of factory-edge-gateway")
    parser.add_argument("--config", type=Path, help="YAML/JSON configuration file (outside Greengrass)")
    parser.add_argument("--log-level", default=os.environ.get("FEG_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = _initial_config(name, model, args.config)
    except ConfigError as exc:
        print(f"{name}: configuration rejected\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        asyncio.run(_serve(name, model, config, args.config, run))
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _initial_config(name: str, model: type[M], path: Path | None) -> M:
    if path is not None:
        return load_file(model, path)
    if os.environ.get("SVCUID"):
        from gateway.ipc_config import load_deployed

        return load_deployed(model, origin=f"{name} deployment")
    raise ConfigError(
        f"{name}: no configuration",
        fix="pass --config FILE (see `gatewayctl config defaults`), or run the component under Greengrass",
    )


async def _serve(
    name: str, model: type[M], config: M, path: Path | None, run: Callable[[Context[M]], Awaitable[None]]
) -> None:
    ctx: Context[M] = Context(name, config, asyncio.Event())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, ctx.stop.set)
    loop.add_signal_handler(signal.SIGINT, ctx.stop.set)
    if path is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(ctx, model, path))
    elif os.environ.get("SVCUID"):
        from gateway.ipc_config import watch_deployments

        await watch_deployments(ctx, model)
    log.info("%s: started (pid %d)", name, os.getpid())
    await run(ctx)
    log.info("%s: stopped", name)


def _reload(ctx: Context[M], model: type[M], path: Path) -> None:
    try:
        new = load_file(model, path)
    except ConfigError as exc:
        log.error("%s: new configuration rejected, the running one stays:\n%s", ctx.name, exc)
        return
    log.info("%s: configuration reloaded from %s", ctx.name, path)
    ctx.updates.put_nowait(new)
