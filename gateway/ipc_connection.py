"""Connecting to Greengrass IPC, hearing of the connection's loss, and translating the SDK's errors.

The transport under :class:`gateway.ipc.GreengrassIpc`, which connects with :func:`open_connection` at start and
again after a drop (:class:`Lifecycle` tells it of the loss), and maps every failed request with :func:`mapped`.
Only :mod:`gateway.ipc` imports this module.

Logs under ``gateway.ipc``: this is the IPC module's connection, split out for size only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from awscrt.exceptions import AwsCrtError
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup, SocketDomain, SocketOptions
from awsiot import eventstreamrpc
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from gateway.errors import ConfigError, DestinationError, GatewayError

log = logging.getLogger("gateway.ipc")

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"
_RECIPE_ACL = "ComponentConfiguration.DefaultConfiguration.accessControl"
SECRET_MANAGER = "aws.greengrass.SecretManager"
#: The IPC service whose accessControl authorises an operation (pub/sub for the rest of ours).
_SERVICE_OF = {"PublishToIoTCore": "aws.greengrass.ipc.mqttproxy", "GetSecretValue": SECRET_MANAGER}


def mapped(exc: BaseException, operation: str, target: str, *, destination: bool = False) -> GatewayError:
    """Translate an SDK or transport error of ``operation`` on ``target`` (a topic or key) into our tree."""
    detail = getattr(exc, "message", None) or repr(exc)
    if isinstance(exc, model.UnauthorizedError):
        service = _SERVICE_OF.get(operation, "aws.greengrass.ipc.pubsub")
        return ConfigError(
            f"IPC {operation} on {target} refused: not authorized ({detail})",
            fix=f"add aws.greengrass#{operation} for {target} to {_RECIPE_ACL}.{service} in the recipe, "
            "then deploy again" + (
                "; the recipes allow factoryedge/{iot:thingName}/..., which the nucleus resolves only with "
                "interpolateComponentConfiguration: true in aws.greengrass.Nucleus (docs/deploying.md)"
                if operation == "PublishToIoTCore" else ""),
        )
    if isinstance(exc, model.ResourceNotFoundError) and operation == "GetSecretValue":
        return ConfigError(
            f"IPC {operation}: {target} is not on this core ({detail or 'not found'})",
            fix=f"list it in the deployment's configuration of {SECRET_MANAGER} (cloudSecrets: [{{arn: ...}}], "
            "the full ARN) and let the core device role call secretsmanager:GetSecretValue on it",
        )
    if isinstance(exc, model.ResourceNotFoundError):
        return ConfigError(
            f"IPC {operation}: {target} not found ({detail})",
            fix="add the key to DefaultConfiguration in the recipe or to the deployment's merge",
        )
    if isinstance(exc, model.InvalidArgumentsError):
        return GatewayError(f"IPC {operation} on {target}: invalid arguments ({detail})", fix="report this bug")
    if isinstance(exc, model.ServiceError):
        kind = DestinationError if destination else GatewayError
        return kind(
            f"IPC {operation} on {target} failed in the nucleus ({detail})",
            fix="retried automatically; if it persists, check the nucleus log (greengrass.log)",
            retryable=True,
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        detail = "no answer in time"
    return GatewayError(
        f"IPC {operation} on {target} failed: {detail}",
        fix="the connection to the nucleus is lost or stalled; retried automatically, restart the component "
        "if it persists",
        retryable=True,
    )


class Lifecycle(eventstreamrpc.LifecycleHandler):  # type: ignore[misc]  # the SDK is untyped
    """Hands a lost connection to its owner (runs on the CRT thread), which connects again."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: Callable[[Exception | None], None] | None = None

    def on_disconnect(self, reason: Exception | None) -> None:
        if self.lost is not None:
            self.lost(reason)
        elif reason is not None:
            log.warning("IPC connection to the nucleus lost: %r", reason)

    def on_error(self, error: Exception) -> bool:
        log.warning("IPC connection error: %r", error)
        return True


async def open_connection(socket_path: str, auth_token: str, timeout_s: float) -> tuple[Any, Lifecycle]:
    """Connect and authenticate: the client, and the handler that hears of the connection's loss."""
    handler = Lifecycle()
    options = SocketOptions()
    options.domain = SocketDomain.Local
    elg = EventLoopGroup(num_threads=1)
    connection = eventstreamrpc.Connection(
        host_name=socket_path,
        port=0,  # unused for Unix sockets
        bootstrap=ClientBootstrap(elg, DefaultHostResolver(elg)),
        socket_options=options,
        connect_message_amender=eventstreamrpc.MessageAmendment.create_static_authtoken_amender(auth_token),
    )
    try:
        await asyncio.wait_for(asyncio.wrap_future(connection.connect(handler)), timeout_s)
    except eventstreamrpc.AccessDeniedError as exc:
        raise ConfigError(
            f"Greengrass IPC at {socket_path} refused the auth token",
            fix=f"{TOKEN_ENV} is issued by the nucleus per component: do not set it by hand (with "
            "`gatewayctl dev run`, the dev server hands each component its token)",
        ) from exc
    # The CRT raises RuntimeError at once for a missing socket file, AwsCrtError later for a refused one.
    except (AwsCrtError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
        connection.close()
        reason = getattr(exc, "name", None) or str(exc) or "timed out"
        raise GatewayError(
            f"cannot connect to Greengrass IPC at {socket_path}: {reason}",
            fix="check that the nucleus (or `gatewayctl dev run`) runs and the socket path is right",
            retryable=True,
        ) from exc
    # executor=None: our callbacks only hand events to the loop, so they may run on the CRT thread.
    client = GreengrassCoreIPCClientV2(client=GreengrassCoreIPCClient(connection), executor=None)
    return client, handler
