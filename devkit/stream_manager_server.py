"""A stream manager server for development and tests: the real SDK talks to it, our embedded store keeps the data.

``aws.greengrass.StreamManager`` is closed source and has no emulator, so this server speaks its wire protocol as
the Python SDK 1.1.2 does, and the real ``StreamManagerClient`` runs against it::

    client -> server   one byte: the connect version (1)
    both ways          frames: int32 big-endian length (= 1 + len(payload)) | u8 operation | CBOR map
    Connect (1)        the server answers the version byte, then ConnectResponse (6) with status 0, or a refusal
                       status (Unauthorized for a wrong auth token) after which the SDK raises and we hang up
    requests           CreateMessageStream 2, DeleteMessageStream 3, AppendMessage 4, ReadMessages 5, ListStreams 11,
                       DescribeMessageStream 13, UpdateMessageStream 15; each answered by the response operation,
                       any other operation by UnknownOperationError (17)

Request and response bodies are built with the SDK's own data classes (``stream_manager.data``), so key names and
status codes are the ones the SDK expects. Requests are multiplexed by ``requestId``: each runs as its own task,
blocking store calls run in a thread pool, and a read waiting for ``minMessageCount`` (until
``readTimeoutMillis``, else NotEnoughMessages) holds neither a thread nor the connection.

The streams live in an :class:`~gateway.streams.embedded.EmbeddedStore` under the store folder, so they survive a
restart of the server. Differences from the real server, on purpose:

- export definitions are accepted and ignored with a warning: nothing is exported;
- persistence Memory is kept on disk like File (with a warning), so that data survives a restart;
- a full RejectNewData stream answers UnknownFailure with a message saying the stream is full (the real server's
  status for it is not documented; the adapter keys on the message). As on the real server, reading frees
  nothing: reader positions in the store folder are ignored, only time to live frees a full RejectNewData stream;
- no export statuses are reported.

The command line and the long-running service (``gatewayctl dev run`` runs one) are in
:mod:`devkit.stream_manager_service`: ``python -m devkit.stream_manager_service --port 8088 --store DIR``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from stream_manager import data as smd

from devkit import stream_manager_wire as _wire
from devkit.stream_manager_wire import Refused
from gateway.errors import ConfigError, StreamError, StreamFull, StreamNotFound
from gateway.streams import segments as seg
from gateway.streams.base import Persistence, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from gateway.streams.stream_manager import definition_to_spec, spec_to_definition

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = smd.Operation
Status = smd.ResponseStatusCode

CONNECT_VERSION = 1
PROTOCOL_VERSIONS = (smd.VersionInfo.PROTOCOL_VERSION.value, "1.0.0")
SERVER_VERSION = "factory-edge-gateway-dev"
_POLL_S = 0.1  # appends by other processes sharing the store have no wake-up; waiting reads look this often


class StreamManagerServer:
    """Stream manager's protocol on 127.0.0.1, backed by the embedded store. See the module doc."""

    def __init__(
        self,
        store_root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | Iterable[str] | None = None,
        workers: int = 8,
    ) -> None:
        """Configure; nothing runs before :meth:`start`.

        Args:
            store_root: folder of the embedded store holding the streams.
            host: address to listen on.
            port: port to listen on; 0 picks a free one (see :attr:`port`). A restart reuses the bound port.
            auth_token: when set, a Connect with another token is refused (Unauthorized), as under Greengrass;
                several tokens (one per component, as the nucleus hands out) may be given.
            workers: threads for blocking store calls.
        """
        self.store_root = Path(store_root)
        self.host = host
        self.auth_tokens: frozenset[str] | None = (
            None if auth_token is None else frozenset([auth_token] if isinstance(auth_token, str) else auth_token)
        )
        self.held_responses = 0  # responses sent late by the test hook, see hold_responses()
        self.waiting_reads = 0  # reads parked until enough messages arrive or their timeout passes
        self._port = port
        self._workers = workers
        self._server: asyncio.Server | None = None
        self._store: EmbeddedStore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._appended: dict[str, asyncio.Event] = {}
        self._holds: dict[int, tuple[float, int]] = {}
        self._holds_lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        # operation -> handler; request and response classes and the response operation follow from the name
        self._handlers: dict[Any, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            Op.CreateMessageStream: self._create, Op.UpdateMessageStream: self._update,
            Op.DeleteMessageStream: self._delete, Op.AppendMessage: self._append, Op.ReadMessages: self._read,
            Op.ListStreams: self._list, Op.DescribeMessageStream: self._describe,
        }

    @property
    def port(self) -> int:
        """The port listened on (the free port picked, once started)."""
        return self._port

    async def start(self) -> None:
        """Open the store and listen."""
        # The real server knows no readers and deletes nothing because it was read: only time to live (or
        # OverwriteOldestData) frees a stream, so the embedded store's freeing of committed data stays off here.
        self._store = EmbeddedStore(self.store_root, reclaim_committed=False)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sm-server")
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("stream manager server listening on %s:%d (streams in %s)", self.host, self._port, self.store_root)

    async def stop(self) -> None:
        """Hang up on every client, stop listening and close the store."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True)
        if self._store is not None:
            self._store.close()
        log.info("stream manager server on %s:%d stopped", self.host, self._port)

    def hold_responses(self, operation: int, seconds: float, count: int = 1) -> None:
        """Test hook: send the next ``count`` responses to request ``operation`` ``seconds`` late.

        Tests use it to make a response arrive after the client's request timed out (the SDK's defect). Safe to
        call from any thread; :attr:`held_responses` counts the late responses sent.
        """
        with self._holds_lock:
            self._holds[operation] = (seconds, count)

    # --- connections ------------------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        requests: set[asyncio.Task[None]] = set()
        try:
            if not await self._handshake(reader, writer):
                return
            while True:
                op, body = await _wire.read_frame(reader)
                request = asyncio.create_task(self._answer(op, body, writer))
                requests.add(request)
                request.add_done_callback(requests.discard)
        except (asyncio.IncompleteReadError, ConnectionError, Refused):
            pass  # the client hung up or broke the framing: drop the connection, as the real server does
        finally:
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            writer.close()
            self._connections.discard(task)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        version = (await reader.readexactly(1))[0]
        op, body = await _wire.read_frame(reader)
        request = _wire.parse(smd.ConnectRequest, body) if op == Op.Connect.value else None
        status, message = self._check_connect(version, request)
        if status != Status.Success:
            log.warning("stream manager server: refused a client: %s", message)
        response = smd.ConnectResponse(
            request_id=request.request_id if request else None,
            status=status,
            error_message=message or None,
            protocol_version=PROTOCOL_VERSIONS[0],
            supported_protocol_versions=list(PROTOCOL_VERSIONS),
            server_version=SERVER_VERSION,
        )
        writer.write(bytes([CONNECT_VERSION]))
        await _wire.send(writer, Op.ConnectResponse.value, response)
        return bool(status == Status.Success)

    def _check_connect(self, version: int, request: Any) -> tuple[Any, str]:
        if version != CONNECT_VERSION:
            return Status.UnsupportedConnectVersion, f"connect version {version} is not supported"
        if request is None:
            return Status.UnexpectedOperation, "the first frame must be a Connect request"
        offered = {request.protocol_version, *(request.other_supported_protocol_versions or [])}
        if not offered & set(PROTOCOL_VERSIONS):
            return Status.UnsupportedProtocolVersion, f"protocol versions {sorted(offered)} are not supported"
        offered_token = (request.auth_token or "").encode()
        if self.auth_tokens is not None and not any(
            hmac.compare_digest(offered_token, token.encode()) for token in self.auth_tokens
        ):
            return Status.Unauthorized, "wrong or missing auth token"
        return Status.Success, ""

    async def _answer(self, op: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        operation = next((o for o in self._handlers if o.value == op), None)
        if operation is None:
            request_id = _wire.request_id(body)
            log.warning("stream manager server: unknown operation %d (request %s)", op, request_id)
            response: Any = smd.UnknownOperationError(
                request_id=request_id, status=Status.UnknownOperation, error_message=f"unknown operation {op}"
            )
            await _wire.send(writer, Op.UnknownOperationError.value, response)
            return
        request_cls = getattr(smd, f"{operation.name}Request")
        response_cls = getattr(smd, f"{operation.name}Response")
        response_op = Op[f"{operation.name}Response"].value
        try:
            request = _wire.parse(request_cls, body)
            fields = await self._handlers[operation](request)
            response = response_cls(request_id=request.request_id, status=Status.Success, **fields)
        except Refused as exc:
            request_id = _wire.request_id(body)
            if request_id is None:
                return  # nothing to answer to
            response = response_cls(request_id=request_id, status=exc.status, error_message=exc.message)
        held = await self._hold(op)
        await _wire.send(writer, response_op, response)
        if held:
            with self._holds_lock:
                self.held_responses += 1

    async def _hold(self, op: int) -> bool:
        with self._holds_lock:
            seconds, count = self._holds.get(op, (0.0, 0))
            if count <= 0:
                return False
            self._holds[op] = (seconds, count - 1)
        await asyncio.sleep(seconds)  # the hook's whole point: answer late
        return True

    # --- operations -------------------------------------------------------------------------------------------
    async def _create(self, request: Any) -> dict[str, Any]:
        spec = self._spec(request.definition)

        def create() -> None:
            if spec.name in self._db.list_streams():
                raise Refused(Status.InvalidRequest, f"stream {spec.name!r} already exists")
            self._db.create_stream(spec)

        await self._run(create)
        return {}

    async def _update(self, request: Any) -> dict[str, Any]:
        spec = self._spec(request.definition)

        def update() -> None:
            self._db.describe(spec.name)  # raises StreamNotFound for a stream that does not exist
            self._db.create_stream(spec)

        await self._run(update)
        return {}

    async def _delete(self, request: Any) -> dict[str, Any]:
        await self._run(self._db.delete_stream, request.name)
        self._wake(request.name)
        return {}

    async def _append(self, request: Any) -> dict[str, Any]:
        if len(request.payload) > seg.MAX_MESSAGE_BYTES:
            raise Refused(Status.RequestPayloadTooLarge,
                           f"message of {len(request.payload)} bytes exceeds {seg.MAX_MESSAGE_BYTES} bytes")
        seq = await self._run(self._db.append, request.name, request.payload)
        self._wake(request.name)
        return {"sequence_number": seq}

    async def _read(self, request: Any) -> dict[str, Any]:
        name = request.stream_name
        options = request.read_messages_options or smd.ReadMessagesOptions()
        start = options.desired_start_sequence_number or 0
        least = options.min_message_count or 1
        most = options.max_message_count if options.max_message_count is not None else least
        if least > most:
            raise Refused(Status.InvalidRequest, "minMessageCount is greater than maxMessageCount")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (options.read_timeout_millis or 0) / 1000
        while True:
            appended = self._appended.setdefault(name, asyncio.Event())  # taken before reading: no lost wake-up
            found = await self._run(self._db.read, name, start, min_count=least, max_count=most, timeout_s=0.0)
            if len(found) >= least:
                return {"messages": [
                    smd.Message(stream_name=name, sequence_number=m.seq, ingest_time=m.ts_ms, payload=m.payload)
                    for m in found
                ]}
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Refused(Status.NotEnoughMessages,
                               f"{len(found)} of at least {least} messages available in stream {name!r}")
            self.waiting_reads += 1
            try:
                await asyncio.wait_for(appended.wait(), min(remaining, _POLL_S))
            except asyncio.TimeoutError:
                pass
            finally:
                self.waiting_reads -= 1

    async def _list(self, request: Any) -> dict[str, Any]:
        return {"streams": await self._run(self._db.list_streams)}

    async def _describe(self, request: Any) -> dict[str, Any]:
        info = await self._run(self._db.describe, request.name)
        status = smd.MessageStreamInfo.storageStatus(
            oldest_sequence_number=info.oldest_seq,
            newest_sequence_number=info.next_seq - 1,
            total_bytes=info.total_bytes,
        )
        spec = info.spec
        if spec.ttl_s is not None and spec.ttl_s < 60:  # written by an embedded-store process; SDK minimum is 60 s
            spec = spec.model_copy(update={"ttl_s": 60.0})
        definition = spec_to_definition(spec)
        return {"message_stream_info": smd.MessageStreamInfo(definition=definition, storage_status=status)}

    # --- helpers ----------------------------------------------------------------------------------------------
    @property
    def _db(self) -> EmbeddedStore:
        assert self._store is not None, "start() the server first"
        return self._store

    def _spec(self, definition: Any) -> StreamSpec:
        if definition is None:
            raise Refused(Status.InvalidRequest, "the request has no stream definition")
        try:
            spec = definition_to_spec(definition)
        except (ConfigError, ValidationError) as exc:
            raise Refused(Status.InvalidRequest, str(exc)) from exc
        export = definition.export_definition
        if export is not None and any(export.as_dict().values()):
            self._warn_once(spec.name, "export", "export definitions are ignored by the development server")
        if spec.persistence is Persistence.MEMORY:
            self._warn_once(spec.name, "memory", "persistence Memory is kept on disk by the development server")
            spec = spec.model_copy(update={"persistence": Persistence.FILE})
        return spec

    def _warn_once(self, stream: str, topic: str, message: str) -> None:
        if (stream, topic) not in self._warned:
            self._warned.add((stream, topic))
            log.warning("stream %r: %s", stream, message)

    def _wake(self, stream: str) -> None:
        appended = self._appended.pop(stream, None)
        if appended is not None:
            appended.set()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in the pool; store errors become the statuses the SDK maps."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except StreamNotFound as exc:
            raise Refused(Status.ResourceNotFound, exc.message) from exc
        except StreamFull as exc:
            raise Refused(Status.UnknownFailure, exc.message) from exc
        except ConfigError as exc:
            raise Refused(Status.InvalidRequest, exc.message) from exc
        except (StreamError, OSError) as exc:
            raise Refused(Status.UnknownFailure, str(exc)) from exc
