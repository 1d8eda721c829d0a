"""An IPC connection that drops while the nucleus keeps running: the component reconnects and its subscriptions
(configuration updates, validation) are made again.

The nucleus forgets a connection's subscriptions when its streams close (``ConfigStoreIPCEventStreamAgent``:
``ConfigurationUpdateOperationHandler.onStreamClosed`` and ``ValidateConfigurationUpdatesOperationHandler.
onStreamClosed`` remove the listeners), so without this a component stops hearing of deployments for good.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from devkit.ipc_server import IpcServer
from gateway.ipc_config import connect_deployment

NAME = "factoryedge.Toy"
DEADLINE_S = 20.0


class Toy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = Field(default=1, ge=0, description="Anything to change.")


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="drop") as folder:
        yield Path(folder) / "ipc.sock"


def test_a_dropped_connection_is_made_again_with_its_subscriptions(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", str(socket_path))
    monkeypatch.setenv("SVCUID", "tok-toy")

    async def body() -> None:
        server = IpcServer(socket_path, {"tok-toy": NAME})
        server.set_configuration(NAME, {"value": 1})
        await server.start()
        accepted: asyncio.Queue[Toy] = asyncio.Queue()
        ipc, config = await connect_deployment(NAME, Toy, accepted.put_nowait, lambda: Toy(value=1))
        try:
            assert config == Toy(value=1)
            for drop in range(2):  # the reconnected connection survives a second drop too
                assert server.drop_connections(NAME) == 1
                # changed while the component is away: it reads the configuration again once reconnected
                server.set_configuration(NAME, {"value": 10 + drop})
                got = await asyncio.wait_for(accepted.get(), DEADLINE_S)
                assert got == Toy(value=10 + drop)
            # the validation subscription is back: a bad deployment is rejected, not applied unvalidated
            applied, message = await server.deploy_configuration(NAME, {"value": -1}, timeout_s=10)
            assert not applied and "value" in message
            # and the update subscription: a later deployment reaches the component
            applied, _ = await server.deploy_configuration(NAME, {"value": 3}, timeout_s=10)
            assert applied
            assert await asyncio.wait_for(accepted.get(), DEADLINE_S) == Toy(value=3)
        finally:
            ipc.close()
            await server.stop()

    asyncio.run(asyncio.wait_for(body(), 60))
