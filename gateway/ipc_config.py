"""Configuration from a Greengrass deployment: read at start, validated before every new deployment applies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

from pydantic import BaseModel

from gateway.config import validate
from gateway.errors import ConfigError
from gateway.ipc import GreengrassIpc
from gateway.runtime import Context

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


def load_deployed(model: type[M], *, origin: str) -> M:
    """Read this component's configuration from the nucleus and validate it."""

    async def fetch() -> dict[str, Any]:
        ipc = await GreengrassIpc.connect()
        try:
            return await ipc.get_configuration()
        finally:
            ipc.close()

    return validate(model, asyncio.run(fetch()), origin=origin)


async def watch_deployments(ctx: Context[M], model: type[M]) -> GreengrassIpc:
    """Reject bad deployments before they apply; queue accepted ones on ``ctx.updates``; report RUNNING."""
    ipc = await GreengrassIpc.connect()

    def check(proposed: dict[str, Any]) -> str | None:
        try:
            validate(model, proposed, origin=f"{ctx.name} deployment")
        except ConfigError as exc:
            log.error("%s: rejected a deployment:\n%s", ctx.name, exc)
            return str(exc)
        return None

    async def changed(_key_path: list[str]) -> None:
        try:
            new = validate(model, await ipc.get_configuration(), origin=f"{ctx.name} deployment")
        except ConfigError as exc:  # validation should have stopped it; keep running the old configuration
            log.error("%s: deployed configuration is invalid, keeping the running one:\n%s", ctx.name, exc)
            return
        ctx.updates.put_nowait(new)

    await ipc.subscribe_validate_configuration(check)
    await ipc.subscribe_configuration_updates(changed)
    await ipc.update_state("RUNNING")
    return ipc
