"""The dev run's control socket and its IoT Core stand-in.

**Control socket** (``<root>/control.sock``, path also in ``<root>/devrun.json``): one JSON request line, one JSON
answer line, then the connection closes. Requests:

- ``{"op": "status"}`` -> the dev run's status (components, states, pids, restarts, endpoints);
- ``{"op": "config", "component": NAME, "merge": {...}, "reset": ["/ptr", ...]}`` -> deploys a configuration
  change the way a deployment does (RESET, then MERGE, then the component validates it before it applies); answers
  ``{"applied": bool, "message": str, "configuration": {...}}``;
- ``{"op": "stop"}`` -> stops the dev run.

**IoT Core stand-in**: every accepted ``PublishToIoTCore`` goes to an MQTT broker (``--mqtt HOST:PORT``, same topic
and QoS) or is appended to a JSON-lines file (``{"topic", "qos", "payload", "ts_ns"}``, the payload as text when it
is UTF-8, else ``{"base64": ...}``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from devkit import devrun_recipe as rcp
from gateway.endpoints import host_port
from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from devkit.devrun_lifecycle import Running
    from devkit.ipc_server import IpcServer

log = logging.getLogger(__name__)
_MAX_REQUEST = 16 * 1024 * 1024


class IotCoreForwarder:
    """Where the dev run's PublishToIoTCore messages go: an MQTT broker or a JSON-lines file."""

    def __init__(self, mqtt: str | None, file: Path) -> None:
        self.mqtt, self.file = mqtt, file
        self.count = 0
        self._client: Any = None

    @property
    def target(self) -> str:
        return f"mqtt://{self.mqtt}" if self.mqtt else str(self.file)

    async def start(self) -> None:
        if self.mqtt is None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            return
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = host_port(self.mqtt, what="--mqtt")
        connected = asyncio.Event()
        loop = asyncio.get_running_loop()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gatewayctl-devrun-{time.time_ns()}")

        def on_connect(*_args: Any) -> None:
            loop.call_soon_threadsafe(connected.set)

        client.on_connect = on_connect
        try:
            await asyncio.to_thread(client.connect, host, port)
        except OSError as exc:
            raise ConfigError(f"--mqtt {self.mqtt}: cannot connect ({exc})", fix="start the broker or fix the address"
                              ) from exc
        client.loop_start()
        try:
            await asyncio.wait_for(connected.wait(), 10)
        except asyncio.TimeoutError:
            client.loop_stop()
            raise ConfigError(f"--mqtt {self.mqtt}: no CONNACK within 10 s", fix="check the broker") from None
        self._client = client

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        if self._client is not None:
            info = self._client.publish(topic, payload, qos=qos)
            if qos > 0:
                await asyncio.to_thread(info.wait_for_publish, 10)
                if not info.is_published():
                    raise OSError(f"broker {self.mqtt} did not acknowledge {topic}")
        else:
            try:
                body: Any = payload.decode()
            except UnicodeDecodeError:
                body = {"base64": base64.b64encode(payload).decode()}
            line = json.dumps({"topic": topic, "qos": qos, "payload": body, "ts_ns": time.time_ns()})
            with open(self.file, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        self.count += 1

    async def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


class Controlled(Protocol):
    """What the control socket drives: a :class:`devkit.devrun.DevRun` (which makes the server, so that the server
    knows the dev run by this much only)."""

    stopping: asyncio.Event
    components: dict[str, Running]
    ipc: IpcServer | None

    def status(self) -> dict[str, Any]: ...


class ControlServer:
    """Serves the control socket of one dev run."""

    def __init__(self, path: str, devrun: Controlled) -> None:
        self.path = path
        self.devrun = devrun
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._on_client, self.path, limit=_MAX_REQUEST)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        Path(self.path).unlink(missing_ok=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            answer = await self._handle(request)
        except (ValueError, ConfigError, GatewayError) as exc:
            answer = {"error": str(exc)}
        writer.write(json.dumps(answer).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _handle(self, request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "status":
            return self.devrun.status()
        if op == "stop":
            self.devrun.stopping.set()
            return {"stopping": True}
        if op == "config":
            return await self._config(request)
        return {"error": f"unknown op {op!r}; use status, config or stop"}

    async def _config(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request.get("component"))
        running = self.devrun.components.get(name)
        ipc = self.devrun.ipc
        if running is None or ipc is None:
            return {"error": f"{name} is not run by this dev run (running: {', '.join(self.devrun.components)})"}
        defaults = dict((running.component.recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration")
                        or {})
        update = {"configurationUpdate": {"merge": request.get("merge") or {}, "reset": request.get("reset") or []}}
        proposed = rcp.configuration_update(defaults, ipc.configuration(name), update)
        applied, message = await ipc.deploy_configuration(name, proposed, timeout_s=30)
        if applied:
            running.component.config = proposed
            ipc.access_control[name] = running.component.access_control
            if running.lifecycle.state == "BROKEN":  # a deployment gives a BROKEN component a new start (Lifecycle)
                running.lifecycle.redeployed()
        log.info("dev run: configuration of %s %s%s", name, "applied" if applied else "REJECTED",
                 f": {message}" if message else "")
        return {"applied": applied, "message": message, "configuration": ipc.configuration(name)}


def request(root: Path, payload: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """Send one request to the dev run under ``root`` and return its answer."""
    state_file = root / "devrun.json"
    try:
        path = json.loads(state_file.read_text())["control_socket"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"no dev run under {root} ({state_file} missing or unreadable)",
                          fix="start one with `gatewayctl dev run --root ROOT`, or pass its --root") from exc
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ConfigError(f"dev run control socket {path}: {exc.strerror or exc}",
                              fix="the dev run is not running any more: start it again") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
