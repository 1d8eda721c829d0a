"""A local stand-in for the Greengrass nucleus' IPC service, speaking the real wire protocol.

No nucleus can run on a developer machine or in CI, so tests and ``gatewayctl dev run`` point the unmodified
``awsiotsdk`` client at this server (``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`` =
:attr:`socket_path`, ``SVCUID`` = a token from ``tokens``). It implements the operations the gateway uses:
GetConfiguration, SubscribeToConfigurationUpdate, SubscribeToValidateConfigurationUpdates,
SendConfigurationValidityReport, UpdateState, PublishToIoTCore, PublishToTopic, SubscribeToTopic and
GetSecretValue (the ``aws.greengrass.SecretManager`` component's operation, secrets given with ``secrets`` or
:meth:`IpcServer.add_secret`).

Authorization follows the recipe's ``accessControl`` shape. A component with no policies given is trusted with
everything (the convenient default for tests); a component with policies gets ``UnauthorizedError`` for every
PublishToIoTCore / PublishToTopic / SubscribeToTopic they do not allow, as the nucleus would. GetSecretValue is
always checked, also for a component with no policies: a secret is exactly what must not leak to a component
whose recipe does not ask for it, and tests of that must not pass by the stand-in's convenience.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.devrun_lifecycle import ComponentLifecycle
from devkit.eventstream import RpcConnection, RpcStream
from devkit.spooler import NucleusSpool, SpoolerStoreError

log = logging.getLogger(__name__)

_NS = "aws.greengrass#"
MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
PUBSUB = "aws.greengrass.ipc.pubsub"
SECRET_MANAGER = "aws.greengrass.SecretManager"
_SERVICE_OF = {
    "PublishToIoTCore": MQTT_PROXY,
    "PublishToTopic": PUBSUB,
    "SubscribeToTopic": PUBSUB,
}

# (topic, payload, qos) -> None, or an awaitable for an asynchronous sink.
IotCoreSink = Callable[[str, bytes, int], "Awaitable[None] | None"]
# component -> service -> policy id -> {"operations": [...], "resources": [...]}: the recipe's accessControl.
AccessControl = Mapping[str, Mapping[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class PublishedMessage:
    """A PublishToIoTCore the server accepted."""

    component: str
    topic: str
    payload: bytes
    qos: int


class _Fault(Exception):
    """An error answer: the SDK raises the class named by ``model`` with this message."""

    def __init__(self, model: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.model = model
        self.body = {"message": message, **extra}


def topic_matches(pattern: str, topic: str, *, glob: bool = False) -> bool:
    """Whether ``topic`` falls under ``pattern`` (MQTT ``+``/``#``; with ``glob``, ``*`` matches any text)."""
    if pattern in ("*", topic):
        return True
    if glob and "*" in pattern:
        return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), topic) is not None
    want, have = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


THING_NAME_VARIABLE = "{iot:thingName}"


def _allowed(policies: Mapping[str, Mapping[str, Any]], service: str, operation: str, resource: str,
             thing_name: str | None = None) -> bool:
    """Whether a policy allows ``operation`` on ``resource``.

    ``thing_name`` is given only when the core interpolates component configuration: the nucleus
    (``KernelConfigResolver.resolve``) replaces ``{iot:thingName}`` in a component's configuration, accessControl
    included, only when its ``interpolateComponentConfiguration`` is true (``DeviceConfiguration``: default false).
    Otherwise the resource keeps the literal text and matches only a topic that spells it.
    """
    for policy in policies.get(service, {}).values():
        operations = policy.get("operations", [])
        if "*" not in operations and operation not in operations:
            continue
        for pattern in policy.get("resources", []):
            if thing_name and THING_NAME_VARIABLE in pattern:
                pattern = pattern.replace(THING_NAME_VARIABLE, thing_name)
            if topic_matches(pattern, resource, glob=service == PUBSUB):
                return True
    return False


def _changed_paths(old: Any, new: Any, prefix: list[str]) -> list[list[str]]:
    """Key paths whose value differs between two configuration trees (leaves, or whole replaced subtrees)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed: list[list[str]] = []
        for key in sorted(set(old) | set(new), key=str):
            changed += _changed_paths(old.get(key), new.get(key), [*prefix, str(key)])
        return changed
    return [] if old == new else [prefix]


def _lookup(tree: dict[str, Any], component: str, key_path: list[str]) -> dict[str, Any]:
    """The value GetConfiguration answers: a subtree as is, a leaf wrapped as ``{last key: value}``."""
    node: Any = tree
    for key in key_path:
        if not isinstance(node, dict) or key not in node:
            raise _Fault(
                _NS + "ResourceNotFoundError",
                f"Key not found: {'/'.join(key_path)} in the configuration of {component}",
                resourceType="Configuration",
                resourceName="/".join(key_path),
            )
        node = node[key]
    return node if isinstance(node, dict) else {key_path[-1]: node}


# ---- aws.greengrass.SecretManager, as its public source does it (aws-greengrass/aws-greengrass-secret-manager,
# SecretManagerIPCAgent.GetSecretValueOperationHandler and SecretManager.validateSecretId/getSecretFromCache):
# a secret id that is not an ARN is mapped to the configured ARN whose name it is (``...:secret:<name>-XXXXXX``),
# else ResourceNotFoundError "Secret not configured <id>"; then the principal is authorised for
# ``aws.greengrass#GetSecretValue`` on that ARN under the accessControl service ``aws.greengrass.SecretManager``
# (resources are ARNs or ``*``), else UnauthorizedError; then the version is looked up (AWSCURRENT unless versionId
# or versionStage is given, both together is an error), else ResourceNotFoundError "Secret not found <id>". The
# response is {secretId: ARN, versionId, versionStage: [labels], secretValue: {secretString | secretBinary}}.
# Docs: https://docs.aws.amazon.com/greengrass/v2/developerguide/ipc-secret-manager.html
SECRET_ARN = re.compile(r"arn:[^:\s]+:secretsmanager:[a-z0-9\-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=,.@\-]+")
CURRENT = "AWSCURRENT"


def secret_allowed(policies: Mapping[str, Mapping[str, Any]], arn: str) -> bool:
    """Whether a component's accessControl lets it GetSecretValue ``arn`` (a resource may use ``*`` as a glob)."""
    for policy in policies.get(SECRET_MANAGER, {}).values():
        operations = policy.get("operations", [])
        if "*" not in operations and _NS + "GetSecretValue" not in operations:
            continue
        for pattern in policy.get("resources", []):
            glob = ".*".join(re.escape(part) for part in str(pattern).split("*"))
            if re.fullmatch(glob, arn) is not None:
                return True
    return False


def read_secrets_file(path: str | Path) -> dict[str, str]:
    """Secrets for the stand-in from a JSON file ``{ARN: text or {key: value, ...}}`` (an object becomes its JSON
    text, as a key/value secret of the Secrets Manager console is stored)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{secret ARN: value}}")
    return {str(arn): value if isinstance(value, str) else json.dumps(value) for arn, value in data.items()}


class IpcServer:
    """Greengrass IPC over a Unix socket for components run outside a nucleus.

    Args:
        socket_path: where to listen; a stale socket file there is replaced.
        tokens: auth token (the component's ``SVCUID``) -> component name; any other token is refused.
        access_control: per-component ``accessControl`` as written in recipes; components absent are trusted.
        iot_core_sink: "IoT Core": receives every message the spooler delivers (also recorded in
            :attr:`published`); raising refuses it and the spooler retries it, as the nucleus does.
        spool: the nucleus' MQTT spooler (:class:`~devkit.spooler.NucleusSpool`); by default the nucleus'
            default, 2.5 MB in memory and online. PublishToIoTCore answers once the message is queued there, not
            when IoT Core got it (``MqttProxyIPCAgent``); :meth:`restart_nucleus` loses a memory spool.
        secrets: secret ARN -> SecretString (str) or SecretBinary (bytes): the secrets the SecretManager component
            holds on the core, i.e. those its ``cloudSecrets`` lists and it could download.
    """

    def __init__(
        self,
        socket_path: str | Path,
        tokens: Mapping[str, str],
        *,
        access_control: AccessControl | None = None,
        iot_core_sink: IotCoreSink | None = None,
        secrets: Mapping[str, str | bytes] | None = None,
        thing_name: str | None = None,
        spool: NucleusSpool | None = None,
        interpolate_component_configuration: bool = False,
    ) -> None:
        self.socket_path = str(socket_path)
        self.thing_name = thing_name  # what {iot:thingName} in an accessControl resource stands for ...
        self.interpolate = interpolate_component_configuration  # ... when the nucleus interpolates (default: no)
        self.tokens = dict(tokens)
        self.access_control = dict(access_control or {})
        self.iot_core_sink = iot_core_sink
        #: Last state each component reported through UpdateState, and every report in order (as reported:
        #: what the nucleus made of them is in :meth:`lifecycle`).
        self.states: dict[str, str] = {}
        self.state_history: dict[str, list[str]] = {}
        #: The nucleus's state machine per component; a dev run passes its own (it supervises the processes).
        self.lifecycles: dict[str, ComponentLifecycle] = {}
        self.published: list[PublishedMessage] = []
        self.spool = spool or NucleusSpool(self._deliver)
        self.spool.deliver = self._deliver
        #: Secret ARN -> (version id, value): what aws.greengrass.SecretManager holds on this core.
        self._secrets: dict[str, tuple[str, str | bytes]] = {}
        for arn, value in (secrets or {}).items():
            self.add_secret(arn, value)
        self._configs: dict[str, dict[str, Any]] = {}
        self._config_subs: list[tuple[str, list[str], RpcStream]] = []
        self._validate_subs: dict[str, list[RpcStream]] = {}
        self._topic_subs: list[tuple[str, str, bool, RpcStream]] = []
        self._pending_reports: dict[str, tuple[str, asyncio.Future[tuple[str, str]]]] = {}
        self._state_changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[Any], RpcConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- server-side API -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on :attr:`socket_path`."""
        self._server = await asyncio.start_unix_server(self._on_client, self.socket_path)
        self.spool.start()

    async def stop(self) -> None:
        """Stop listening, drop every client connection and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for connection in self._connections.values():
            connection.close()
        await asyncio.gather(*self._connections, *self._tasks, return_exceptions=True)
        await self.spool.stop()
        Path(self.socket_path).unlink(missing_ok=True)

    def configuration(self, component: str) -> dict[str, Any]:
        """A copy of the component's current configuration tree."""
        return copy.deepcopy(self._configs.get(component, {}))

    def set_configuration(self, component: str, config: dict[str, Any]) -> None:
        """Replace a configuration without validation (like a local merge) and notify update subscribers."""
        old, self._configs[component] = self._configs.get(component, {}), copy.deepcopy(config)
        for path in _changed_paths(old, config, []):
            self._spawn(self._notify_update(component, path))

    def add_secret(self, arn: str, value: str | bytes) -> None:
        """Put a secret (a new version, labelled AWSCURRENT) on the stand-in's SecretManager."""
        if SECRET_ARN.fullmatch(arn) is None:
            raise ValueError(f"{arn!r} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:"
                             "secret:NAME-XXXXXX)")
        self._secrets[arn] = (str(uuid.uuid4()), value)

    async def deploy_configuration(
        self, component: str, new_config: dict[str, Any], timeout_s: float = 20.0
    ) -> tuple[bool, str]:
        """Deploy a configuration the way the nucleus does: validate first, then apply.

        Validation subscribers of the component get the proposed configuration. A REJECTED report leaves the
        configuration unchanged. ACCEPTED applies it; so do no report within ``timeout_s`` and having no
        validation subscriber (the nucleus proceeds in both cases).

        Returns:
            (applied, message): the component's message when it sent one, otherwise what happened.
        """
        subscribers = [s for s in self._validate_subs.get(component, []) if not s.closed]
        if not subscribers:
            self.set_configuration(component, new_config)
            return True, f"{component} has no validation subscriber: configuration applied"
        deployment_id = str(uuid.uuid4())
        report: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._pending_reports[deployment_id] = (component, report)
        event = {"validateConfigurationUpdateEvent": {"configuration": new_config, "deploymentId": deployment_id}}
        try:
            for stream in subscribers:
                await stream.send(_NS + "ValidateConfigurationUpdateEvents", event)
            status, message = await asyncio.wait_for(report, timeout_s)
        except asyncio.TimeoutError:
            status, message = "ACCEPTED", f"no validity report from {component} within {timeout_s} s: applied"
        finally:
            self._pending_reports.pop(deployment_id, None)
        if status != "ACCEPTED":
            return False, message
        self.set_configuration(component, new_config)
        return True, message

    def lifecycle(self, component: str) -> ComponentLifecycle:
        """The component's state as the nucleus keeps it. Without a supervisor (a dev run), a component that
        connects was started by someone: it begins STARTING, as under a ``Startup`` lifecycle."""
        found = self.lifecycles.get(component)
        if found is None:
            found = self.lifecycles[component] = ComponentLifecycle(component, state="STARTING")
        return found

    def drop_connections(self, component: str) -> int:
        """Close the component's IPC connections without stopping the server, as a nucleus connection that drops
        while the nucleus keeps running; their subscriptions end with them. Returns how many were closed."""
        dropped = [c for c in self._connections.values() if c.identity == component]
        for connection in dropped:
            connection.close()
        return len(dropped)

    async def wait_for_state(self, component: str, state: str, timeout_s: float) -> None:
        """Wait until ``component`` last reported ``state``; raises ``TimeoutError`` after ``timeout_s``."""

        async def reached() -> None:
            while self.states.get(component) != state:
                self._state_changed.clear()
                await self._state_changed.wait()

        await asyncio.wait_for(reached(), timeout_s)

    # ---- connections and dispatch --------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = RpcConnection(reader, writer, self._authenticate, self._handle)
        task = asyncio.current_task()
        assert task is not None  # a connection handler always runs in a task
        self._connections[task] = connection
        try:
            await connection.serve()
        finally:
            del self._connections[task]

    def _authenticate(self, connect_payload: Any) -> str | None:
        token = connect_payload.get("authToken") if isinstance(connect_payload, dict) else None
        component = self.tokens.get(token) if isinstance(token, str) else None
        if component is None:
            log.warning("IPC CONNECT refused: unknown auth token")
        return component

    async def _handle(self, connection: RpcConnection, stream: RpcStream, model: str, body: Any) -> None:
        component = connection.identity or ""
        name = stream.operation.removeprefix(_NS)
        try:
            self._authorize(component, name, body)
            handler = getattr(self, f"_op_{name}", None)
            if handler is None:
                raise _Fault(_NS + "ServiceError", f"{stream.operation} is not implemented by the dev IPC server")
            response = await handler(component, stream, body)
        except _Fault as fault:
            await stream.send(fault.model, fault.body, error=True, terminate=True)
            return
        # A malformed request: the SDK raises InvalidArgumentsError for it.
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad = _NS + "InvalidArgumentsError"
            await stream.send(bad, {"message": f"bad {model}: {exc!r}"}, error=True, terminate=True)
            return
        # Subscriptions keep their stream open for events; every other operation ends with its response.
        await stream.send(_NS + name + "Response", response, terminate=not name.startswith("Subscribe"))

    def _authorize(self, component: str, name: str, body: Any) -> None:
        service = _SERVICE_OF.get(name)
        policies = self.access_control.get(component)
        if service is None or policies is None:
            return
        resource = body.get("topicName") if service == MQTT_PROXY else body.get("topic")
        if not _allowed(policies, service, _NS + name, str(resource), self.thing_name if self.interpolate else None):
            raise _Fault(
                _NS + "UnauthorizedError",
                f"Principal {component} is not authorized to perform {service}:{_NS}{name} on resource {resource}",
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- operations: each returns the response body; faults raise _Fault -----------------------------------

    async def _op_GetConfiguration(self, component: str, stream: RpcStream, body: Any) -> Any:
        target = body.get("componentName") or component
        if target not in self._configs and target not in self.tokens.values():
            raise _Fault(
                _NS + "ResourceNotFoundError",
                f"Component {target} has no configuration",
                resourceType="Component",
                resourceName=target,
            )
        value = _lookup(self._configs.get(target, {}), target, list(body.get("keyPath") or []))
        return {"componentName": target, "value": copy.deepcopy(value)}

    async def _op_SubscribeToConfigurationUpdate(self, component: str, stream: RpcStream, body: Any) -> Any:
        entry = (body.get("componentName") or component, list(body.get("keyPath") or []), stream)
        self._config_subs.append(entry)
        stream.on_close.append(lambda: self._config_subs.remove(entry))
        return {}

    async def _op_SubscribeToValidateConfigurationUpdates(self, component: str, stream: RpcStream, body: Any) -> Any:
        subscribers = self._validate_subs.setdefault(component, [])
        subscribers.append(stream)
        stream.on_close.append(lambda: subscribers.remove(stream))
        return {}

    async def _op_SendConfigurationValidityReport(self, component: str, stream: RpcStream, body: Any) -> Any:
        report = body["configurationValidityReport"]
        pending = self._pending_reports.get(report.get("deploymentId", ""))
        if pending is None or pending[0] != component:
            raise _Fault(
                _NS + "InvalidArgumentsError",
                f"Validation request either timed out or was never made (deployment {report.get('deploymentId')})",
            )
        if not pending[1].done():
            pending[1].set_result((str(report["status"]), str(report.get("message") or "")))
        return {}

    async def _op_UpdateState(self, component: str, stream: RpcStream, body: Any) -> Any:
        # LifecycleIPCEventStreamAgent.UpdateStateOperationHandler: the report goes to Lifecycle.reportState, which
        # may ignore it (an invalid transition) or turn it into BROKEN; the call is answered with success anyway.
        state = str(body["state"])
        self.states[component] = state
        self.state_history.setdefault(component, []).append(state)
        self.lifecycle(component).report(state, "reported over IPC")
        self._state_changed.set()
        return {}

    async def _op_PublishToIoTCore(self, component: str, stream: RpcStream, body: Any) -> Any:
        """Answer once the message is in the spooler, as ``MqttProxyIPCAgent`` does (not on IoT Core's PUBACK)."""
        topic, qos = body["topicName"], int(body.get("qos", 0))
        try:
            self.spool.add(component, topic, base64.b64decode(body.get("payload", "")), qos)
        except SpoolerStoreError as exc:  # the nucleus' words: "Publish to topic %s failed: %s"
            raise _Fault(_NS + "ServiceError", f"Publish to topic {topic} failed: {exc}") from exc
        return {}

    async def _deliver(self, component: str, topic: str, payload: bytes, qos: int) -> None:
        """The spooler publishes a message: IoT Core (the sink) acknowledged it unless the sink raised."""
        if self.iot_core_sink is not None:
            result = self.iot_core_sink(topic, payload, qos)
            if inspect.isawaitable(result):
                await result
        self.published.append(PublishedMessage(component, topic, payload, qos))

    def restart_nucleus(self) -> None:
        """The nucleus restarts (a deployment, a crash, a power cut): every IPC connection drops and the spooler
        keeps only what a Disk spool holds (``SpoolerStorageType``); a Memory spool's messages are gone."""
        for connection in self._connections.values():
            connection.close()
        self.spool.restart()

    async def _op_PublishToTopic(self, component: str, stream: RpcStream, body: Any) -> Any:
        topic = body["topic"]
        message = dict(body["publishMessage"])
        kind = "binaryMessage" if "binaryMessage" in message else "jsonMessage"
        event = {kind: {"message": message[kind]["message"], "context": {"topic": topic}}}
        for filter_, subscriber, from_others_only, sub_stream in list(self._topic_subs):
            if topic_matches(filter_, topic) and not (from_others_only and subscriber == component):
                await sub_stream.send(_NS + "SubscriptionResponseMessage", event)
        return {}

    async def _op_SubscribeToTopic(self, component: str, stream: RpcStream, body: Any) -> Any:
        others_only = body.get("receiveMode") == "RECEIVE_MESSAGES_FROM_OTHERS"
        entry = (str(body["topic"]), component, others_only, stream)
        self._topic_subs.append(entry)
        stream.on_close.append(lambda: self._topic_subs.remove(entry))
        return {"topicName": body["topic"]}

    async def _op_GetSecretValue(self, component: str, stream: RpcStream, body: Any) -> Any:
        secret_id = str(body.get("secretId") or "")
        if not secret_id:
            raise _Fault(_NS + "ServiceError", "SecretId absent in the request")
        arn = secret_id if SECRET_ARN.fullmatch(secret_id) else self._arn_named(secret_id)
        if not secret_allowed(self.access_control.get(component, {}), arn):
            raise _Fault(
                _NS + "UnauthorizedError",
                f"Principal {component} is not authorized to perform {SECRET_MANAGER}:{_NS}GetSecretValue on "
                f"resource {arn}",
            )
        version_id, stage = body.get("versionId"), body.get("versionStage")
        if version_id and stage:
            raise _Fault(_NS + "ServiceError", "Both versionId and Stage are set in the request")
        held = self._secrets.get(arn)
        if held is None or (version_id and version_id != held[0]) or (stage and stage != CURRENT):
            what = f"Version Id {version_id}" if version_id else f"Version stage {stage}" if stage else "Secret"
            raise _Fault(_NS + "ResourceNotFoundError", f"{what} not found for secret {secret_id}",
                         resourceType="secret", resourceName=secret_id)
        value = held[1]
        secret = {"secretBinary": base64.b64encode(value).decode()} if isinstance(value, bytes) \
            else {"secretString": value}
        return {"secretId": arn, "versionId": held[0], "versionStage": [CURRENT], "secretValue": secret}

    def _arn_named(self, name: str) -> str:
        for arn in self._secrets:
            if re.fullmatch(r".*:secret:" + re.escape(name) + r"-[A-Za-z0-9]{6}", arn):
                return arn
        raise _Fault(_NS + "ResourceNotFoundError", f"Secret not configured {name}", resourceType="secret",
                     resourceName=name)

    async def _notify_update(self, component: str, path: list[str]) -> None:
        event = {"configurationUpdateEvent": {"componentName": component, "keyPath": path}}
        for target, prefix, stream in list(self._config_subs):
            shared = min(len(prefix), len(path))
            if target == component and prefix[:shared] == path[:shared]:
                await stream.send(_NS + "ConfigurationUpdateEvents", event)
