"""All Greengrass IPC of the gateway, as an asyncio API over ``awsiotsdk``'s ``GreengrassCoreIPCClientV2``.

Nothing else in the gateway imports ``awsiot`` (but :mod:`gateway.ipc_connection`, which connects for this
module and translates the SDK's errors). The SDK is future/callback based and its callbacks run on the
CRT's network thread: requests here use the SDK's ``*_async`` calls and await their futures (the event loop
never blocks), and stream events are handed to the event loop with ``call_soon_threadsafe``, so user callbacks
always run on the loop. SDK errors become :mod:`gateway.errors` classes whose message names the operation and
the topic or key, and whose fix says what to change (most often the recipe's ``accessControl``).

Outside Greengrass, ``gatewayctl dev run`` and the tests serve the same protocol with
:class:`devkit.ipc_server.IpcServer`.

**A dropped connection** (the nucleus still running) is made again with backoff (:data:`RECONNECT_FIRST_S` to
:data:`RECONNECT_MAX_S`), and every subscription made on it is made again on the new one: the nucleus forgets a
connection's subscriptions when their streams close (``ConfigStoreIPCEventStreamAgent``: the ``onStreamClosed``
of its configuration update and validation handlers remove the listeners). Then the
:meth:`GreengrassIpc.on_reconnect` callbacks run (the configuration is read again: a change made meanwhile sent
no event). Calls made while it is down fail with a retryable GatewayError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from awscrt.exceptions import AwsCrtError
from awsiot import eventstreamrpc
from awsiot.greengrasscoreipc import model

from gateway.errors import ConfigError, GatewayError
from gateway.ipc_connection import SOCKET_ENV, TOKEN_ENV, Lifecycle, mapped, open_connection

log = logging.getLogger(__name__)

RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.2, 30.0

#: Receives the key path that changed; re-read with :meth:`GreengrassIpc.get_configuration`.
ConfigUpdateCallback = Callable[[list[str]], "Awaitable[None] | None"]
#: Receives a proposed configuration; returns None to accept it or a message saying why it is rejected.
Validator = Callable[[dict[str, Any]], "str | Awaitable[str | None] | None"]
#: Receives (topic, payload) of a local pub/sub message.
TopicCallback = Callable[[str, bytes], "Awaitable[None] | None"]


def running_under_greengrass() -> bool:
    """Whether a Greengrass nucleus (or a stand-in setting the same variables) started this process."""
    return bool(os.environ.get(SOCKET_ENV)) and bool(os.environ.get(TOKEN_ENV))


@dataclass(frozen=True)
class SecretValue:
    """A secret served by ``aws.greengrass.SecretManager``: a text or a binary value and which version it is.

    The value is left out of ``repr`` so that a log line or a traceback showing this object never shows it.
    """

    arn: str
    version_id: str
    version_stages: tuple[str, ...]
    text: str | None = field(default=None, repr=False)
    binary: bytes | None = field(default=None, repr=False)


class GreengrassIpc:
    """The gateway's Greengrass IPC connection. Create with :meth:`connect`; call :meth:`close` when done."""

    def __init__(self, client: Any, timeout_s: float, *, socket_path: str = "", auth_token: str = "",
                 handler: Lifecycle | None = None) -> None:
        """Use :meth:`connect`; this wraps an already connected ``GreengrassCoreIPCClientV2``."""
        self._client = client
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        # The SDK's operation objects own their native streams: keep them alive as long as the subscription.
        self._operations: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # What a reconnection needs: where, who, and every subscription to make again (operation, target, start).
        self._where = (socket_path, auth_token)
        self._subscriptions: list[tuple[str, str, Callable[[], tuple[Any, Any]]]] = []
        self._reconnected: list[Callable[[], Awaitable[None] | None]] = []
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._watch(handler)

    @classmethod
    async def connect(
        cls, *, socket_path: str | None = None, auth_token: str | None = None, timeout_s: float = 10.0
    ) -> GreengrassIpc:
        """Connect to the nucleus (or a stand-in) and authenticate.

        Args:
            socket_path: the IPC socket; defaults to ``$AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``.
            auth_token: the component's token; defaults to ``$SVCUID``.
            timeout_s: limit for connecting and, later, for every request.

        Raises:
            ConfigError: not running under Greengrass, or the token was refused.
            GatewayError: the socket cannot be reached in time (retryable).
        """
        socket_path = socket_path or os.environ.get(SOCKET_ENV)
        auth_token = auth_token or os.environ.get(TOKEN_ENV)
        if not socket_path or not auth_token:
            raise ConfigError(
                f"no Greengrass IPC: {SOCKET_ENV} and {TOKEN_ENV} must both be set",
                fix="run the component under Greengrass, or locally with `gatewayctl dev run`",
            )
        client, handler = await open_connection(socket_path, auth_token, timeout_s)
        return cls(client, timeout_s, socket_path=socket_path, auth_token=auth_token, handler=handler)

    def _watch(self, handler: Lifecycle | None) -> None:
        if handler is not None:
            handler.lost = lambda reason: self._on_loop(self._lost, reason)

    def _lost(self, reason: Exception | None) -> None:
        """On the loop: the connection dropped; connect again unless we closed it."""
        if self._closed or self._reconnecting is not None or not all(self._where):
            return
        log.warning("IPC connection to the nucleus lost (%r): connecting again, then making its %d subscription(s) "
                    "again", reason, len(self._subscriptions))
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        pause, attempts = RECONNECT_FIRST_S, 0
        try:
            while not self._closed:
                attempts += 1
                try:
                    client, handler = await open_connection(*self._where, self._timeout_s)
                    old, self._client, self._operations = self._client, client, []
                    with contextlib.suppress(Exception):  # the old connection is gone already
                        old.close()
                    for operation, target, start in self._subscriptions:
                        await self._subscribe(operation, target, start, remember=False)
                except GatewayError as exc:  # ConfigError too: a token refused now may be accepted later
                    if attempts == 1 or pause >= RECONNECT_MAX_S:
                        log.warning("IPC: connecting again failed (%s); retrying every %g s at most", exc,
                                    RECONNECT_MAX_S)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RECONNECT_MAX_S)
                    continue
                self._watch(handler)
                log.info("IPC connection to the nucleus made again (attempt %d); subscriptions made again", attempts)
                for callback in self._reconnected:
                    self._run(callback())
                return
        finally:
            self._reconnecting = None

    def on_reconnect(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``callback`` on the loop each time the connection was made again (after its subscriptions)."""
        self._reconnected.append(callback)

    def close(self) -> None:
        """Close the connection; subscriptions end with it. Safe to call twice."""
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._client.close()


    # ---- requests ------------------------------------------------------------------------------------------

    async def _call(self, operation: str, target: str, start: Callable[[], Any], *, destination: bool = False) -> Any:
        try:
            future: concurrent.futures.Future[Any] = start()
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout_s)
        except (
            model.GreengrassCoreIPCError,
            eventstreamrpc.EventStreamError,
            eventstreamrpc.ConnectionClosedError,
            eventstreamrpc.StreamClosedError,
            AwsCrtError,
            asyncio.TimeoutError,
        ) as exc:
            raise mapped(exc, operation, target, destination=destination) from exc

    async def get_configuration(
        self, key_path: list[str] | None = None, component: str | None = None
    ) -> dict[str, Any]:
        """The configuration under ``key_path`` (all of it by default) of this or another component.

        A key path naming a single value gives ``{last key: value}``, as the nucleus answers.
        """
        target = f"{component or 'own configuration'} key /{'/'.join(key_path or [])}"
        response = await self._call(
            "GetConfiguration",
            target,
            lambda: self._client.get_configuration_async(component_name=component, key_path=key_path or []),
        )
        return dict(response.value or {})

    async def get_secret_value(
        self, secret_id: str, *, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretValue:
        """A secret's value from ``aws.greengrass.SecretManager`` (the version labelled AWSCURRENT by default).

        Needs an accessControl policy of this component for ``aws.greengrass.SecretManager``, operation
        ``aws.greengrass#GetSecretValue``, on the secret's ARN, and the secret listed in the SecretManager
        component's ``cloudSecrets``; without them a ConfigError says which to add.
        """
        response = await self._call(
            "GetSecretValue",
            f"secret {secret_id}",
            lambda: self._client.get_secret_value_async(
                secret_id=secret_id, version_id=version_id, version_stage=version_stage
            ),
        )
        value = response.secret_value
        return SecretValue(
            arn=str(response.secret_id or secret_id),
            version_id=str(response.version_id or ""),
            version_stages=tuple(response.version_stage or ()),
            text=value.secret_string if value is not None else None,
            binary=value.secret_binary if value is not None else None,
        )

    async def update_state(self, state: Literal["RUNNING", "ERRORED"]) -> None:
        """Report the component's state to the nucleus (shown by ``greengrass-cli component list``)."""
        await self._call("UpdateState", state, lambda: self._client.update_state_async(state=state))

    async def publish_to_iot_core(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish to AWS IoT Core through the nucleus' MQTT connection (QoS 0 is dropped while offline)."""
        if qos not in (0, 1):
            raise ConfigError(f"qos {qos} for IoT Core topic {topic} is not supported", fix="use qos 0 or 1")
        await self._call(
            "PublishToIoTCore",
            f"topic {topic}",
            lambda: self._client.publish_to_iot_core_async(topic_name=topic, qos=str(qos), payload=payload),
            destination=True,
        )

    async def publish_to_topic(self, topic: str, payload: bytes) -> None:
        """Publish a binary message on the nucleus' local pub/sub."""
        message = model.PublishMessage(binary_message=model.BinaryMessage(message=payload))
        await self._call(
            "PublishToTopic",
            f"topic {topic}",
            lambda: self._client.publish_to_topic_async(topic=topic, publish_message=message),
        )

    # ---- subscriptions: SDK callbacks run on the CRT thread and only hand over to the loop -----------------

    def _on_loop(self, fn: Callable[..., object], *args: object) -> None:
        # A closed loop means the component is shutting down and nobody waits for this event.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self, result: object) -> None:
        """Keep an awaitable returned by a user callback running as a task (a plain value needs nothing)."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("IPC callback failed", exc_info=task.exception())

    def _on_stream_error(self, what: str) -> Callable[[Exception], bool]:
        def on_error(error: Exception) -> bool:
            log.warning("IPC subscription %s ended with an error: %r", what, error)
            return True

        return on_error

    async def _subscribe(self, operation: str, target: str, start: Callable[[], tuple[Any, Any]], *,
                         remember: bool = True) -> None:
        if remember:  # made again on a new connection after a drop
            self._subscriptions.append((operation, target, start))

        def begin() -> Any:
            future, stream = start()
            self._operations.append(stream)
            return future

        await self._call(operation, target, begin)

    async def subscribe_configuration_updates(
        self, callback: ConfigUpdateCallback, key_path: list[str] | None = None, component: str | None = None
    ) -> None:
        """Call ``callback(changed key path)`` on the loop for every change under ``key_path``."""

        def on_event(event: Any) -> None:
            self._on_loop(lambda path: self._run(callback(path)), list(event.configuration_update_event.key_path))

        await self._subscribe(
            "SubscribeToConfigurationUpdate",
            f"key /{'/'.join(key_path or [])}",
            lambda: self._client.subscribe_to_configuration_update_async(
                component_name=component,
                key_path=key_path or [],
                on_stream_event=on_event,
                on_stream_error=self._on_stream_error("to configuration updates"),
            ),
        )

    async def subscribe_validate_configuration(self, validator: Validator) -> None:
        """Have ``validator`` accept or reject each deployment's configuration before the nucleus applies it.

        The validator returns None to accept or a message to reject; a GatewayError or ValueError it raises (a
        pydantic ValidationError is one) rejects with the error's text, and any other exception rejects too
        (logged with its traceback), since a nucleus that gets no report applies the configuration.
        """

        def on_event(event: Any) -> None:
            proposal = event.validate_configuration_update_event
            self._on_loop(lambda: self._run(self._validate(validator, proposal.configuration, proposal.deployment_id)))

        await self._subscribe(
            "SubscribeToValidateConfigurationUpdates",
            "configuration validation",
            lambda: self._client.subscribe_to_validate_configuration_updates_async(
                on_stream_event=on_event, on_stream_error=self._on_stream_error("to configuration validation")
            ),
        )

    async def _validate(self, validator: Validator, configuration: dict[str, Any], deployment_id: str) -> None:
        try:
            verdict = validator(dict(configuration or {}))
            problem = await verdict if inspect.isawaitable(verdict) else verdict
        except (GatewayError, ValueError) as exc:
            problem = str(exc)
        except Exception as exc:  # a crashing validator must reject: silence would let the nucleus apply
            log.exception("configuration validator failed on deployment %s", deployment_id)
            problem = f"configuration validator failed: {exc!r}"
        statuses = model.ConfigurationValidityStatus
        status = statuses.ACCEPTED if problem is None else statuses.REJECTED
        if problem is not None:
            log.warning("configuration of deployment %s rejected: %s", deployment_id, problem)
        report = model.ConfigurationValidityReport(status=status, deployment_id=deployment_id, message=problem)
        try:
            await self._call(
                "SendConfigurationValidityReport",
                f"deployment {deployment_id}",
                lambda: self._client.send_configuration_validity_report_async(configuration_validity_report=report),
            )
        except GatewayError as exc:  # the nucleus stopped waiting (timeout): it decides without our report
            log.warning("%s", exc)

    async def subscribe_to_topic(self, topic: str, callback: TopicCallback) -> None:
        """Call ``callback(topic, payload)`` on the loop for local pub/sub messages matching ``topic``.

        JSON messages from other publishers arrive as their JSON text encoded in UTF-8.
        """

        def on_event(event: Any) -> None:
            message = event.binary_message or event.json_message
            payload = message.message if event.binary_message else json.dumps(message.message).encode()
            received = message.context.topic if message.context else topic
            self._on_loop(lambda: self._run(callback(received, payload)))

        await self._subscribe(
            "SubscribeToTopic",
            f"topic {topic}",
            lambda: self._client.subscribe_to_topic_async(
                topic=topic,
                on_stream_event=on_event,
                on_stream_error=self._on_stream_error(f"to topic {topic}"),
            ),
        )
