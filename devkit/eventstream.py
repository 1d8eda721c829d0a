"""Event-stream framing and the server side of event-stream RPC, as spoken by the Greengrass nucleus.

A frame is ``[u32 total length][u32 headers length][u32 crc32 of the first 8 bytes][headers][payload]
[u32 crc32 of everything before]``, big-endian. A header is ``u8 name length, name, u8 type, value``.

The RPC layer puts ``:message-type``, ``:message-flags`` and ``:stream-id`` (int32 headers) on every frame.
Stream 0 carries the connection handshake (CONNECT, CONNECT_ACK) and pings; each operation opens a new stream
whose first client message names the ``operation``. The server answers on the same stream id; a frame with the
TERMINATE_STREAM flag closes the stream on both sides.

This module knows nothing about Greengrass: :mod:`devkit.ipc_server` gives the operations their meaning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

log = logging.getLogger(__name__)

_PRELUDE = struct.Struct(">III")
_REFUSED_LINGER_S = 5.0
_MAX_FRAME = 16 * 1024 * 1024  # the CRT client's own limit; a longer frame means a broken peer


class MessageType(IntEnum):
    """Values of the ``:message-type`` header."""

    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


CONNECTION_ACCEPTED = 0x1
TERMINATE_STREAM = 0x2

# Header value types (the wire codes) and their fixed sizes; 6 (bytes) and 7 (string) carry a u16 length.
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _INT16, _INT32, _INT64, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {_BYTE: ">b", _INT16: ">h", _INT32: ">i", _INT64: ">q", _TIMESTAMP: ">q"}

HeaderValue = bool | int | bytes | str | uuid.UUID


class FrameError(ValueError):
    """A frame that cannot be decoded (bad CRC, bad length, unknown header type)."""


@dataclass
class Frame:
    """One decoded event-stream message. Integers are int32 headers unless given as another type."""

    headers: dict[str, HeaderValue]
    payload: bytes = b""

    @property
    def message_type(self) -> int:
        return int(self.headers.get(":message-type", -1))

    @property
    def flags(self) -> int:
        return int(self.headers.get(":message-flags", 0))

    @property
    def stream_id(self) -> int:
        return int(self.headers.get(":stream-id", 0))

    def json(self) -> Any:
        """The payload parsed as JSON (an empty payload is an empty object)."""
        return json.loads(self.payload) if self.payload else {}


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    head = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return head + struct.pack(">B", _BOOL_TRUE if value else _BOOL_FALSE)
    if isinstance(value, int):
        return head + struct.pack(">Bi", _INT32, value)
    if isinstance(value, str):
        raw = value.encode()
        return head + struct.pack(">BH", _STRING, len(raw)) + raw
    if isinstance(value, uuid.UUID):
        return head + struct.pack(">B", _UUID) + value.bytes
    return head + struct.pack(">BH", _BYTES, len(value)) + value


def encode_frame(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """Encode one frame; ``int`` header values are sent as int32, as the RPC layer expects."""
    raw_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = _PRELUDE.size + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _decode_headers(raw: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    while pos < len(raw):
        name_len = raw[pos]
        name = raw[pos + 1 : pos + 1 + name_len].decode()
        pos += 1 + name_len
        kind = raw[pos]
        pos += 1
        value: HeaderValue
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            value = kind == _BOOL_TRUE
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            (value,) = struct.unpack_from(fmt, raw, pos)
            pos += struct.calcsize(fmt)
        elif kind in (_BYTES, _STRING):
            (length,) = struct.unpack_from(">H", raw, pos)
            data = raw[pos + 2 : pos + 2 + length]
            value = data.decode() if kind == _STRING else bytes(data)
            pos += 2 + length
        elif kind == _UUID:
            value = uuid.UUID(bytes=raw[pos : pos + 16])
            pos += 16
        else:
            raise FrameError(f"unknown header type {kind} for header {name!r}")
        headers[name] = value
    return headers


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read and check one frame; ``asyncio.IncompleteReadError`` at end of stream, FrameError if bad."""
    prelude = await reader.readexactly(_PRELUDE.size)
    total, headers_len, prelude_crc = _PRELUDE.unpack(prelude)
    if zlib.crc32(prelude[:8]) != prelude_crc:
        raise FrameError("prelude CRC mismatch")
    if not _PRELUDE.size + headers_len + 4 <= total <= _MAX_FRAME:
        raise FrameError(f"frame length {total} (headers {headers_len}) out of range")
    rest = await reader.readexactly(total - _PRELUDE.size)
    body, (message_crc,) = prelude + rest[:-4], struct.unpack(">I", rest[-4:])
    if zlib.crc32(body) != message_crc:
        raise FrameError("message CRC mismatch")
    raw_headers = rest[:headers_len]
    return Frame(_decode_headers(raw_headers), bytes(rest[headers_len:-4]))


@dataclass(eq=False)  # streams are compared by identity: subscription lists remove the exact one
class RpcStream:
    """One operation stream of a connection, as the service handler sees it."""

    connection: RpcConnection
    stream_id: int
    operation: str
    closed: bool = False
    on_close: list[Callable[[], None]] = field(default_factory=list)

    async def send(self, model: str, body: Any, *, error: bool = False, terminate: bool = False) -> None:
        """Send a JSON message of shape ``model`` on this stream (no-op once the stream is closed)."""
        if self.closed:
            return
        kind = MessageType.APPLICATION_ERROR if error else MessageType.APPLICATION_MESSAGE
        headers: dict[str, HeaderValue] = {
            ":message-type": int(kind),
            ":message-flags": TERMINATE_STREAM if terminate else 0,
            ":stream-id": self.stream_id,
            ":content-type": "application/json",
            "service-model-type": model,
        }
        if terminate:
            self.close()
        await self.connection.write(encode_frame(headers, json.dumps(body).encode()))

    def close(self) -> None:
        """Forget the stream locally and run its close hooks (subscriptions unregister there)."""
        if self.closed:
            return
        self.closed = True
        self.connection.streams.pop(self.stream_id, None)
        for hook in self.on_close:
            hook()


# (connection, stream, request model name, request JSON) -> None; the handler answers through the stream.
RequestHandler = Callable[["RpcConnection", RpcStream, str, Any], Awaitable[None]]
# CONNECT payload -> identity of the peer (a component name), or None to refuse.
Authenticator = Callable[[Any], "str | None"]


class RpcConnection:
    """Server side of one event-stream RPC connection: handshake, stream bookkeeping, dispatch."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authenticate: Authenticator,
        handle: RequestHandler,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._authenticate = authenticate
        self._handle = handle
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.identity: str | None = None
        self.streams: dict[int, RpcStream] = {}

    async def write(self, data: bytes) -> None:
        """Write one encoded frame; frames from concurrent handlers never interleave."""
        async with self._write_lock:
            if self._writer.is_closing():
                return
            self._writer.write(data)
            await self._writer.drain()

    def close(self) -> None:
        """Drop the connection; :meth:`serve` then returns."""
        self._writer.close()

    async def serve(self) -> None:
        """Run the connection until the peer leaves or breaks the protocol."""
        try:
            if await self._handshake():
                while True:
                    self._dispatch(await read_frame(self._reader))
            else:
                # Let the refused client close first: if our close won the race, the client would report a
                # closed socket instead of the access denial carried by the CONNECT_ACK.
                await asyncio.wait_for(self._until_eof(), _REFUSED_LINGER_S)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the client went away (or a refused one lingered): the normal end of a connection
        except FrameError as exc:
            log.warning("IPC connection of %s dropped: %s", self.identity or "unknown peer", exc)
        finally:
            for stream in list(self.streams.values()):
                stream.close()
            for task in list(self._tasks):
                task.cancel()
            self._writer.close()

    async def _until_eof(self) -> None:
        while await self._reader.read(4096):
            pass

    async def _handshake(self) -> bool:
        frame = await read_frame(self._reader)
        if frame.message_type != MessageType.CONNECT:
            raise FrameError(f"first message has type {frame.message_type}, expected CONNECT")
        try:
            self.identity = self._authenticate(frame.json())
        except ValueError:  # JSON that does not parse: refused like a wrong token
            self.identity = None
        flags = CONNECTION_ACCEPTED if self.identity is not None else 0
        ack = {":message-type": int(MessageType.CONNECT_ACK), ":message-flags": flags, ":stream-id": 0}
        await self.write(encode_frame(ack))
        return self.identity is not None

    def _dispatch(self, frame: Frame) -> None:
        if frame.message_type == MessageType.PING:
            pong = {":message-type": int(MessageType.PING_RESPONSE), ":message-flags": 0, ":stream-id": 0}
            self._spawn(self.write(encode_frame(pong, frame.payload)))
            return
        if frame.stream_id == 0:
            return  # other protocol-level messages (a late ping response) need no answer
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            operation = frame.headers.get("operation")
            if not isinstance(operation, str):
                return  # a message for a stream we already closed: the client may send it in a race
            stream = RpcStream(self, frame.stream_id, operation)
            self.streams[frame.stream_id] = stream
            model = str(frame.headers.get("service-model-type", ""))
            self._spawn(self._handle(self, stream, model, frame.json()))
        if frame.flags & TERMINATE_STREAM:
            stream.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
