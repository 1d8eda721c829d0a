"""Opening and closing the stream manager SDK's clients, for the adapter in :mod:`gateway.streams.stream_manager`.

What the SDK's client does not do by itself:

- **Start-up.** Its constructor connects and fails at once when the server is not up yet (it starts with the
  nucleus, often after us). :func:`connect_with_backoff` retries with exponential backoff until a deadline, then
  raises :class:`~gateway.errors.StreamUnavailable` naming the server and the fix.
- **Failed attempts leak.** The constructor starts its event loop thread before connecting and leaves it running
  when the connection fails; :func:`open_sdk` keeps the half-made object so that it can close it.
- **Closing can hang.** ``close`` drains the write buffer, forever on a stalled socket; :func:`close_sdk` gives it
  a bounded wait in a thread.
- **Error storms.** The SDK logs every failed connection attempt as an error; its logger here drops those, since the
  adapter reports the connection state itself.

:class:`Client` is the adapter's bookkeeping around one SDK client: calls in flight, retired, closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from stream_manager import ConnectFailedException, StreamManagerClient, StreamManagerException

from gateway.errors import StreamUnavailable

# The adapter's logger: operators follow one name for the stream manager connection, whichever module logs.
log = logging.getLogger("gateway.streams.stream_manager")

# ConnectionError and (since 3.11) TimeoutError are OSError; a server closing mid-handshake is an EOFError.
TRANSPORT_ERRORS = (OSError, EOFError, asyncio.TimeoutError)
TCP_TIMEOUT_MAX_S = 3.0
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
_CLOSE_WAIT_S = 2.0

FIX_UNREACHABLE = (
    "check that the aws.greengrass.StreamManager component is deployed and running on this core "
    "(greengrass-cli component list) and that STREAM_MANAGER_SERVER_PORT (default 8088) is the port it listens on; "
    "outside Greengrass use the embedded store (store kind: embedded)"
)
FIX_HANDSHAKE = (
    "run the component under Greengrass so that AWS_CONTAINER_AUTHORIZATION_TOKEN is set, with a dependency on "
    "aws.greengrass.StreamManager; check that the server's version supports protocol 1.1.0"
)


class _QuietConnectErrors(logging.Filter):
    """The SDK logs every failed connection attempt as an error; the adapter reports the connection state itself
    (once while waiting at start-up, then as StreamUnavailable), so a core that boots slowly logs no error storm."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Connection error while connecting")


_SDK_LOG = logging.getLogger("gateway.streams.stream_manager.sdk")
_SDK_LOG.addFilter(_QuietConnectErrors())


@dataclass(eq=False)
class Client:
    """One SDK client as the adapter hands it out: closed once retired and idle, never earlier (the SDK's sync API
    waits without a timeout for its event loop, so closing under an in-flight call would strand it)."""

    sdk: Any
    inflight: int = 0
    retired: bool = False
    closed: bool = False


def connect_with_backoff(host: str, port: int, request_timeout_s: float, timeout_s: float) -> Any:
    """An SDK client connected to ``host:port``, retrying with exponential backoff for up to ``timeout_s``.

    Raises:
        StreamUnavailable: the server did not answer within ``timeout_s`` (retryable), or refused the handshake (not).
    """
    where = f"stream manager at {host}:{port}"
    deadline = time.monotonic() + timeout_s
    pause = _BACKOFF_FIRST_S
    attempts = 0
    while True:
        attempts += 1
        try:
            tcp_timeout_s = max(0.1, min(TCP_TIMEOUT_MAX_S, deadline - time.monotonic()))
            return open_sdk(host, port, tcp_timeout_s, request_timeout_s)
        except TRANSPORT_ERRORS as exc:
            last: BaseException = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StreamUnavailable(
                f"{where} is not reachable: {attempts} attempts over {timeout_s:g} s, last {error_name(last)}",
                fix=FIX_UNREACHABLE,
            ) from last
        if attempts == 1:
            log.info("%s is not reachable yet (%s); retrying for up to %g s", where, error_name(last), timeout_s)
        time.sleep(min(pause, remaining))  # backoff between attempts
        pause = min(pause * 2, _BACKOFF_MAX_S)


def open_sdk(host: str, port: int, tcp_timeout_s: float, request_timeout_s: float) -> Any:
    """One connection attempt; transport errors propagate, a refused handshake raises a fatal StreamUnavailable."""
    # The SDK starts its event loop thread before connecting and leaves it running when the connection fails;
    # keeping the object lets us close it, so failed attempts do not leak threads.
    sdk = StreamManagerClient.__new__(StreamManagerClient)
    try:
        sdk.__init__(
            host=host, port=port, connect_timeout=tcp_timeout_s, request_timeout=request_timeout_s, logger=_SDK_LOG,
        )
    except ConnectFailedException as exc:
        close_sdk(sdk)
        raise StreamUnavailable(
            f"stream manager at {host}:{port} refused the connection handshake (wrong or missing auth token, or an "
            "unsupported protocol version)", fix=FIX_HANDSHAKE, retryable=False,
        ) from exc
    except BaseException:
        close_sdk(sdk)
        raise
    return sdk


def close_sdk(sdk: Any) -> None:
    """Close an SDK client without hanging on a stalled socket (its close drains the write buffer)."""

    def close() -> None:
        try:
            sdk.close()
        except (OSError, RuntimeError, StreamManagerException) as exc:
            log.debug("closing a stream manager client: %s", error_name(exc))

    closer = threading.Thread(target=close, name="sm-client-close", daemon=True)
    closer.start()
    closer.join(_CLOSE_WAIT_S)


def error_name(exc: BaseException) -> str:
    """``Type: message`` of an exception, or only its type when the message is empty."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
