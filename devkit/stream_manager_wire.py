"""Stream manager's wire protocol, server side: frames, CBOR bodies and request parsing (see NOTES §2).

Frames are ``int32 big-endian length (= 1 + len(payload)) | u8 operation | CBOR map``; bodies are built and parsed
with the SDK's own data classes (``stream_manager.data``), so key names and status codes are the SDK's.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import cbor2
from stream_manager import data as smd
from stream_manager.utilinternal import UtilInternal

Status = smd.ResponseStatusCode
FRAME_HEAD = struct.Struct(">iB")
MAX_FRAME = 1 << 30  # the SDK's own limit


class Refused(Exception):
    """A request answered with an error status."""

    def __init__(self, status: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length, op = FRAME_HEAD.unpack(await reader.readexactly(FRAME_HEAD.size))
    if not 1 <= length <= MAX_FRAME:
        raise Refused(Status.InvalidRequest, f"bad frame length {length}")
    return op, await reader.readexactly(length - 1)


async def send(writer: asyncio.StreamWriter, op: int, message: Any) -> None:
    if writer.is_closing():
        return
    body = cbor2.dumps(message.as_dict())
    writer.write(FRAME_HEAD.pack(len(body) + 1, op) + body)  # one write: frames of concurrent answers never mix
    try:
        await writer.drain()
    except ConnectionError:
        pass  # the client is gone; its connection task cleans up


def parse(cls: Any, body: bytes) -> Any:
    """Decode and validate a request as the SDK defines it; refuse it as InvalidRequest otherwise."""
    try:
        request = cls.from_dict(cbor2.loads(body))
    except (ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:  # CBORDecodeError is a ValueError
        raise Refused(Status.InvalidRequest, f"malformed {cls.__name__}: {exc}") from exc
    invalid = UtilInternal.is_invalid(request)
    if invalid:
        raise Refused(Status.InvalidRequest, f"invalid {cls.__name__}: {invalid}")
    return request


def request_id(body: bytes) -> str | None:
    try:
        decoded = cbor2.loads(body)
    except (ValueError, EOFError):
        return None
    request_id = decoded.get("requestId") if isinstance(decoded, dict) else None
    return request_id if isinstance(request_id, str) else None
