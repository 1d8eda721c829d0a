"""Under Greengrass a component takes its configuration from the deployment over IPC (real SDK, our IPC server),
validated; a bad deployment is rejected with the reason and the running configuration stays."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from devkit.ipc_server import IpcServer
from devkit.peers import free_port
from gateway.componentconfig import PublisherConfig
from gateway.errors import ConfigError, StreamUnavailable
from gateway.ipc_config import load_deployed
from gateway.revision import revision_of
from gateway.runtime import Context, watch_deployments
from gateway.streams import StoreConfig

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


class Toy(BaseModel):
    """A component configuration with the parts the runtime looks at: a store path and an endpoint."""

    model_config = ConfigDict(extra="forbid")
    store: StoreConfig = Field(description="Where the status file goes.")
    value: int = Field(default=1, description="Anything to change.")
    fail: bool = Field(default=False, description="Make run() fail, as a configuration that cannot run.")
    transient: bool = Field(default=False, description="Make run() fail with a retryable error (a peer down).")
    endpoint: str = Field(default="", description="A peer; new ones are probed at validation.")


def test_runtime_revisions_restarts_errors_and_endpoint_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import runtime

    monkeypatch.setattr(runtime, "TAKE_LIVE_S", 0.2)
    monkeypatch.setattr(runtime, "RETRY_FIRST_S", 0.2)
    name, status = "factoryedge.Toy", tmp_path / "store" / "status" / "factoryedge.Toy.json"
    closed = free_port()  # nothing listens there
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        base = {"store": {"path": str(tmp_path / "store")}, "endpoint": f"opc.tcp://127.0.0.1:{open_port}"}
        runs: list[int] = []

        async def run(ctx: Context[Toy]) -> None:
            runs.append(ctx.config.value)
            if ctx.config.transient:
                raise StreamUnavailable("stream manager at 127.0.0.1:8088 is not reachable", fix="start it")
            if ctx.config.fail:
                raise RuntimeError("the toy cannot run this")
            await ctx.stop.wait()  # never takes ctx.updates: every change is applied by an in-process restart

        def state() -> dict[str, Any]:
            return dict(json.loads(status.read_text())) if status.exists() else {}

        async def until(cond: Any, what: str) -> None:
            async def poll() -> None:
                while not cond():
                    await asyncio.sleep(0.05)

            try:
                await asyncio.wait_for(poll(), 20)
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out waiting for {what}: {state()}") from None

        async def scenario() -> None:
            server = IpcServer(str(tmp_path / "ipc.sock"), {"tok-toy": name})
            server.set_configuration(name, base)
            await server.start()
            monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", server.socket_path)
            monkeypatch.setenv("SVCUID", "tok-toy")
            runner = runtime._Runner(name, Toy, run, None)
            serving = asyncio.create_task(runner.serve(None))
            try:
                first = revision_of(Toy.model_validate(base))
                await until(lambda: state().get("config_revision") == first and server.states.get(name) == "RUNNING",
                            "first revision")
                ok, message = await server.deploy_configuration(name, {**base, "value": "x"}, timeout_s=10)
                assert not ok and "value" in message
                ok, message = await server.deploy_configuration(
                    name, {**base, "endpoint": f"opc.tcp://127.0.0.1:{closed}"}, timeout_s=10)
                assert not ok and f"endpoint: 127.0.0.1:{closed} is unreachable" in message
                assert state()["config_revision"] == first
                ok, _ = await server.deploy_configuration(name, {**base, "value": 2}, timeout_s=10)
                assert ok
                second = revision_of(Toy.model_validate({**base, "value": 2}))
                await until(lambda: state().get("config_revision") == second, "the restarted revision")
                assert runs[-1] == 2
                # transient (retryable): retried in-process, RUNNING for the nucleus, the cause in the status file
                ok, _ = await server.deploy_configuration(name, {**base, "value": 4, "transient": True}, timeout_s=10)
                assert ok
                await until(lambda: (s := state()).get("config_state") == "RETRYING"
                            and "stream manager" in s["config_error"] and runs.count(4) >= 3, "retries in-process")
                assert server.states[name] == "RUNNING" and server.lifecycle(name).state == "RUNNING"
                ok, _ = await server.deploy_configuration(name, {**base, "value": 3}, timeout_s=10)
                assert ok
                await until(lambda: runs[-1] == 3 and state().get("config_state") == "RUNNING", "RUNNING again")
                assert state()["config_error"] == "" and server.state_history[name] == ["RUNNING"]
                # not transient: ERRORED, and the process ends for the nucleus to restart it (Lifecycle)
                ok, _ = await server.deploy_configuration(name, {**base, "fail": True}, timeout_s=10)
                assert ok  # valid, but run() cannot run it
                with pytest.raises(runtime._Errored) as ended:
                    await asyncio.wait_for(serving, 20)
                assert ended.value.code == runtime.EXIT_ERRORED
                assert server.lifecycle(name).state == "ERRORED"
                assert state()["config_state"] == "ERRORED" and "the toy cannot run this" in state()["config_error"]
            finally:
                runner.shutdown.set()
                await asyncio.wait_for(asyncio.gather(serving, return_exceptions=True), 20)
                await server.stop()

        asyncio.run(scenario())
