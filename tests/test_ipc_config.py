"""Under Greengrass a component takes its configuration from the deployment over IPC (real SDK, our IPC server),
validated; a bad deployment is rejected with the reason and the running configuration stays."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.componentconfig import PublisherConfig
from gateway.dev.ipc_server import IpcServer
from gateway.errors import ConfigError
from gateway.ipc_config import load_deployed, watch_deployments
from gateway.runtime import Context

COMPONENT = "factoryedge.Publisher"
GOOD = {"destinations": [{"type": "file", "name": "deployed", "path": "out/x.jsonl"}], "metrics_interval_s": 30}


def _on(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> Any:
    """Run a server method on the server's own loop (it schedules notifications there)."""

    async def call() -> Any:
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


@pytest.fixture
def nucleus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[IpcServer, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    server = IpcServer(str(tmp_path / "ipc.socket"), {"tok-pub": COMPONENT})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    _on(loop, server.set_configuration, COMPONENT, GOOD)
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", server.socket_path)
    monkeypatch.setenv("SVCUID", "tok-pub")
    yield server, loop
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_configuration_comes_from_the_deployment(nucleus: tuple[IpcServer, asyncio.AbstractEventLoop]) -> None:
    cfg = load_deployed(PublisherConfig, origin="test")
    assert cfg.destinations[0].name == "deployed" and cfg.metrics_interval_s == 30


def test_invalid_deployed_configuration_is_refused(nucleus: tuple[IpcServer, asyncio.AbstractEventLoop]) -> None:
    server, loop = nucleus
    _on(loop, server.set_configuration, COMPONENT, {"destinations": [{"type": "file", "name": "x", "colour": "red"}]})
    with pytest.raises(ConfigError, match=r"destinations\.0\.file\.colour"):
        load_deployed(PublisherConfig, origin="test")


def test_bad_deployment_rejected_good_one_applied(nucleus: tuple[IpcServer, asyncio.AbstractEventLoop]) -> None:
    server, server_loop = nucleus

    async def scenario() -> None:
        ctx = Context(COMPONENT, PublisherConfig.model_validate(GOOD), asyncio.Event())
        ipc = await watch_deployments(ctx, PublisherConfig)
        try:
            deploy = asyncio.run_coroutine_threadsafe(server.deploy_configuration(
                COMPONENT, {"destinations": [{"type": "kafka", "name": "k"}]}, timeout_s=10), server_loop)
            accepted, message = await asyncio.wrap_future(deploy)
            assert not accepted and "destinations.0" in message and "kafka" in message
            assert server.configuration(COMPONENT) == GOOD
            new = {**GOOD, "metrics_interval_s": 5}
            deploy = asyncio.run_coroutine_threadsafe(server.deploy_configuration(COMPONENT, new, timeout_s=10),
                                                      server_loop)
            accepted, _ = await asyncio.wrap_future(deploy)
            assert accepted
            applied = await asyncio.wait_for(ctx.updates.get(), timeout=10)
            assert applied.metrics_interval_s == 5
            assert server.states[COMPONENT] == "RUNNING"
        finally:
            ipc.close()

    asyncio.run(scenario())
    assert os.environ["SVCUID"] == "tok-pub"
