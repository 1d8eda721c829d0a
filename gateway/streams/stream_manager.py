"""The stream contract on Greengrass stream manager, through its Python SDK (``stream-manager`` 1.1.2).

All of the gateway's stream manager calls live here; opening and closing the SDK's clients (start-up backoff,
handshake errors, bounded close) in :mod:`gateway.streams.stream_manager_client`. What the adapter adds to the SDK:

- **Start-up.** The SDK connects in its constructor and fails at once when the server is not up yet (it starts
  with the nucleus, often after us). The adapter retries with exponential backoff for ``connect_timeout_s``, then
  raises :class:`~gateway.errors.StreamUnavailable` naming the host, the port and the fix.
- **The SDK's timeout defect.** A response that arrives after its request timed out kills the client's read loop
  (``KeyError`` on the request id) and every later call times out. On a timeout or a connection error the adapter
  retires the client, makes a new one and retries the call once; if that fails too it raises ``StreamUnavailable``
  (retryable). A retried append may store its message twice (at least once, like every retry in the gateway).
  A retired client is closed once its last in-flight call returned: closing it earlier would strand those calls,
  because the SDK's sync API waits without a timeout for its event loop.
- **Errors** map to :mod:`gateway.errors`; ``read`` keeps the contract (after the timeout it returns what there is,
  where the SDK raises ``NotEnoughMessagesException``). Waits longer than half the request timeout are split, so a
  long read never trips the defect above.
- **RejectNewData needs a time to live.** Stream manager deletes nothing because it was read, so a full
  RejectNewData stream frees space only when its time to live expires; ``create_stream`` refuses one without
  ``ttl_s``, or with segments too large to delete (:func:`refuse_jamming`).
- **Counters.** The server reports oldest/newest sequence numbers and bytes, no drop counters.
  ``dropped_messages`` is ``oldest_seq``: sequence numbers start at 0 without gaps, so every message below the
  oldest retained one was dropped by overwrite or time to live. ``rejected_appends`` counts the appends *this
  adapter instance* saw refused as full; the server keeps no such count, so it is per process and starts at 0.

Calls from many threads share one client: the SDK multiplexes requests by id, so a long read does not hold up an
append. The lock only guards replacing the client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import stream_manager as sm
from stream_manager import (
    ConnectFailedException,
    InvalidRequestException,
    NotEnoughMessagesException,
    RequestPayloadTooLargeException,
    ResourceNotFoundException,
    StreamManagerException,
    UnknownOperationException,
    ValidationException,
)

from gateway.errors import ConfigError, StreamError, StreamFull, StreamNotFound, StreamUnavailable
from gateway.streams.base import Persistence, StoredMessage, StrategyOnFull, StreamInfo, StreamSpec
from gateway.streams.stream_manager_client import (
    FIX_HANDSHAKE,
    FIX_UNREACHABLE,
    TCP_TIMEOUT_MAX_S,
    TRANSPORT_ERRORS,
    Client,
    close_sdk,
    connect_with_backoff,
    error_name,
    open_sdk,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_TTL_MS = 60_000  # the SDK refuses shorter times to live


def refuse_jamming(spec: StreamSpec) -> None:
    """Refuse a RejectNewData stream that stream manager could never free once full.

    Stream manager deletes nothing because it was read (``read_messages`` does not consume; the server knows no
    readers). What it documents (SDK ``MessageStreamDefinition`` and ``StrategyOnFull``, stream-manager 1.1.2):
    RejectNewData rejects "any append message request after the stream is full"; time to live: "Data may be
    deleted at any time after the TTL expires; deletion is not guaranteed to occur immediately"; and "Data is only
    deleted segment by segment". So under RejectNewData only time to live frees space, a whole segment at a time:
    without ``ttl_s`` a full stream refuses data for good, and with the stream's size within one or two segments
    the segment being written may be all there is to delete.
    """
    if spec.strategy_on_full is not StrategyOnFull.REJECT_NEW_DATA:
        return
    if spec.ttl_s is None:
        raise ConfigError(
            f"stream {spec.name!r}: strategy_on_full RejectNewData without ttl_s refuses data for good once full on "
            "stream manager (reading deletes nothing; only a time to live frees space)",
            fix="set ttl_s (e.g. 86400: data older than that is deleted, read or not, a segment at a time, and the "
            "stream accepts again), or use strategy_on_full OverwriteOldestData",
        )
    if 2 * spec.segment_size_bytes > spec.max_size_bytes:
        raise ConfigError(
            f"stream {spec.name!r}: RejectNewData with segment_size_bytes {spec.segment_size_bytes} over half of "
            f"max_size_bytes {spec.max_size_bytes} may leave stream manager no whole segment to delete when full",
            fix=f"set segment_size_bytes to {spec.max_size_bytes // 2} or less (data is deleted a whole segment at "
            "a time), or use strategy_on_full OverwriteOldestData",
        )


def spec_to_definition(spec: StreamSpec) -> Any:
    """The SDK's ``MessageStreamDefinition`` for a stream spec."""
    ttl_ms = None
    if spec.ttl_s is not None:
        ttl_ms = round(spec.ttl_s * 1000)
        if ttl_ms < MIN_TTL_MS:
            raise ConfigError(
                f"stream {spec.name!r}: ttl_s {spec.ttl_s:g} is below stream manager's minimum of 60 s",
                fix="set ttl_s to 60 or more, or null to keep data until max_size_bytes forces a drop",
            )
    return sm.MessageStreamDefinition(
        name=spec.name,
        max_size=spec.max_size_bytes,
        stream_segment_size=spec.segment_size_bytes,
        time_to_live_millis=ttl_ms,
        strategy_on_full=sm.StrategyOnFull[spec.strategy_on_full.value],
        persistence=sm.Persistence[spec.persistence.value],
        flush_on_write=spec.flush_on_write,
    )


def definition_to_spec(definition: Any) -> StreamSpec:
    """The stream spec of an SDK ``MessageStreamDefinition`` (export definitions have no counterpart)."""
    if definition.strategy_on_full is None:
        raise ConfigError(
            f"stream {definition.name!r}: the definition has no strategy_on_full",
            fix="set strategy_on_full to RejectNewData or OverwriteOldestData",
        )
    ttl_ms = definition.time_to_live_millis
    persistence = definition.persistence or sm.Persistence.File
    return StreamSpec(
        name=definition.name,
        max_size_bytes=definition.max_size,
        segment_size_bytes=definition.stream_segment_size,
        ttl_s=ttl_ms / 1000 if ttl_ms is not None else None,
        strategy_on_full=StrategyOnFull(definition.strategy_on_full.name),
        persistence=Persistence(persistence.name),
        flush_on_write=bool(definition.flush_on_write),  # stream manager's default is false
    )


class StreamManagerStore:
    """Streams in Greengrass stream manager. See :class:`~gateway.streams.base.StreamStore` and the module doc."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8088,
        *,
        connect_timeout_s: float = 60.0,
        request_timeout_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.request_timeout_s = request_timeout_s
        self.reconnects = 0
        self._where = f"stream manager at {host}:{port}"
        self._lock = threading.Lock()
        self._rejected: dict[str, int] = {}
        self._message_bytes: dict[str, int] = {}  # per stream: the mean size of the messages last read
        self._closed = False
        self._client: Client | None = Client(connect_with_backoff(host, port, request_timeout_s, connect_timeout_s))

    # --- the contract -----------------------------------------------------------------------------------------
    def create_stream(self, spec: StreamSpec) -> None:
        refuse_jamming(spec)
        definition = spec_to_definition(spec)
        with self._sdk_errors(spec.name, "create"):
            try:
                self._call(lambda c: c.create_message_stream(definition))
            except InvalidRequestException:
                # The server refuses to create a stream that exists; the contract updates it instead.
                if spec.name not in self.list_streams():
                    raise
                self._call(lambda c: c.update_message_stream(definition))

    def append(self, stream: str, payload: bytes) -> int:
        try:
            return int(self._call(lambda c: c.append_message(stream, payload)))
        except StreamManagerException as exc:
            if not _says_full(exc):
                raise self._error(exc, stream, "append to") from exc
            with self._lock:
                self._rejected[stream] = self._rejected.get(stream, 0) + 1
            raise StreamFull(
                f"stream {stream!r} in {self._where} is full (RejectNewData): append refused and counted",
                fix="let the readers catch up (is a destination down?), or raise max_size_bytes, "
                "or use OverwriteOldestData to keep the newest data instead",
            ) from exc

    def read(
        self, stream: str, start_seq: int, *, min_count: int = 1, max_count: int = 100, timeout_s: float = 0.0,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        if max_bytes is None:
            return self._read(stream, start_seq, min_count, max_count, timeout_s)
        # Stream manager's read has no byte limit: ask for twice as many messages as fit at the mean size of the
        # stream's last ones (at least 8), and keep those that fit (the first always); the rest is read again next.
        seen = self._message_bytes.get(stream)
        if seen:
            max_count = min(max_count, max(8, 2 * max_bytes // seen))
        got = self._read(stream, start_seq, min_count, max_count, timeout_s)
        if got:
            self._message_bytes[stream] = max(1, sum(len(m.payload) for m in got) // len(got))
        room = max_bytes
        for i, m in enumerate(got):
            room -= len(m.payload)
            if room < 0 and i:
                return got[:i]
        return got

    def _read(self, stream: str, start_seq: int, min_count: int, max_count: int, timeout_s: float
              ) -> list[StoredMessage]:
        if max_count <= 0:
            return []
        if min_count <= 0:  # satisfied by nothing: return what there is now
            min_count, timeout_s = 1, 0.0
        least = min(min_count, max_count)
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._sdk_errors(stream, "read from"):
            while True:
                wait_s = min(max(0.0, deadline - time.monotonic()), self.request_timeout_s / 2)
                try:
                    return self._read_once(stream, start_seq, least, max_count, wait_s)
                except NotEnoughMessagesException:
                    if time.monotonic() >= deadline:
                        break
            if least == 1:
                return []
            try:  # the contract returns what there is after the timeout
                return self._read_once(stream, start_seq, 1, max_count, 0.0)
            except NotEnoughMessagesException:
                return []

    def describe(self, stream: str) -> StreamInfo:
        with self._sdk_errors(stream, "describe"):
            info = self._call(lambda c: c.describe_message_stream(stream))
        status = info.storage_status
        oldest = int(status.oldest_sequence_number or 0) if status else 0
        newest = status.newest_sequence_number if status else None
        next_seq = int(newest) + 1 if newest is not None else oldest
        with self._lock:
            rejected = self._rejected.get(stream, 0)
        total = int(status.total_bytes or 0) if status else 0
        return StreamInfo(stream, oldest, next_seq, total, oldest, rejected, definition_to_spec(info.definition))

    def list_streams(self) -> list[str]:
        with self._sdk_errors("*", "list"):
            return sorted(self._call(lambda c: c.list_streams()))

    def delete_stream(self, stream: str) -> None:
        with self._sdk_errors(stream, "delete"):
            self._call(lambda c: c.delete_message_stream(stream))
        with self._lock:
            self._rejected.pop(stream, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client = self._client
        if client is not None:
            self._discard(client)

    # --- calls ------------------------------------------------------------------------------------------------
    def _read_once(self, stream: str, start: int, least: int, most: int, wait_s: float) -> list[StoredMessage]:
        options = sm.ReadMessagesOptions(
            desired_start_sequence_number=max(0, start),
            min_message_count=least,
            max_message_count=most,
            read_timeout_millis=int(wait_s * 1000),
        )
        messages = self._call(lambda c: c.read_messages(stream, options))
        return [StoredMessage(m.sequence_number, m.ingest_time or 0, m.payload) for m in messages]

    def _call(self, op: Callable[[Any], T]) -> T:
        """Run one SDK call; on a timeout or connection error replace the client and retry once."""
        client = self._acquire()
        try:
            return op(client.sdk)
        except TRANSPORT_ERRORS as exc:
            first: BaseException = exc
        finally:
            self._release(client)
        log.warning("%s: %s; reconnecting and retrying once", self._where, error_name(first))
        self._discard(client)
        client = self._acquire()
        try:
            return op(client.sdk)
        except TRANSPORT_ERRORS as exc:
            self._discard(client)  # the next call starts on a fresh client
            raise StreamUnavailable(
                f"{self._where} failed twice ({error_name(first)}, then {error_name(exc)})", fix=FIX_UNREACHABLE
            ) from exc
        finally:
            self._release(client)

    def _acquire(self) -> Client:
        with self._lock:
            if self._client is None:
                if self._closed:
                    raise StreamError(f"the store for {self._where} is closed", fix="open a new store")
                self._client = Client(self._open_now())
                self.reconnects += 1
            self._client.inflight += 1
            return self._client

    def _release(self, client: Client) -> None:
        with self._lock:
            client.inflight -= 1
            close = self._closable(client)
        if close:
            close_sdk(client.sdk)

    def _discard(self, client: Client) -> None:
        """Stop handing out ``client`` (unless another thread already replaced it); close it once it is idle."""
        with self._lock:
            if self._client is client:
                self._client = None
            client.retired = True
            close = self._closable(client)
        if close:
            close_sdk(client.sdk)

    @staticmethod
    def _closable(client: Client) -> bool:
        """Whether ``client`` should be closed now, marking it closed (called under the lock)."""
        if client.retired and client.inflight == 0 and not client.closed:
            client.closed = True
            return True
        return False

    # --- connecting -------------------------------------------------------------------------------------------
    def _open_now(self) -> Any:
        try:
            return open_sdk(self.host, self.port, TCP_TIMEOUT_MAX_S, self.request_timeout_s)
        except TRANSPORT_ERRORS as exc:
            raise StreamUnavailable(f"{self._where} is not reachable: {error_name(exc)}", fix=FIX_UNREACHABLE) from exc

    # --- errors -----------------------------------------------------------------------------------------------
    @contextmanager
    def _sdk_errors(self, stream: str, action: str) -> Iterator[None]:
        try:
            yield
        except StreamManagerException as exc:
            raise self._error(exc, stream, action) from exc

    def _error(self, exc: Any, stream: str, action: str) -> StreamError | ConfigError:
        text = f"{type(exc).__name__}: {exc.message or exc}"
        what = f"{self._where} could not {action} stream {stream!r}"
        if isinstance(exc, ResourceNotFoundException):
            return StreamNotFound(
                f"stream {stream!r} does not exist in {self._where}",
                fix="check the stream name in the configuration, or start the component that creates it",
            )
        if isinstance(exc, ValidationException | InvalidRequestException):
            return ConfigError(
                f"{what}: {text}",
                fix="check the stream definition against stream manager's limits (name, sizes, time to live)",
            )
        if isinstance(exc, RequestPayloadTooLargeException):
            return StreamError(f"{what}: {text}", fix="write smaller batches")
        if isinstance(exc, ConnectFailedException):
            return StreamUnavailable(f"{what}: the server refused the handshake", fix=FIX_HANDSHAKE)
        if isinstance(exc, UnknownOperationException):
            return StreamError(f"{what}: {text}", fix="update aws.greengrass.StreamManager to 2.0 or later")
        # ServerTimeout, UnknownFailure, OutOfMemory, MessageStoreReadError: the server's trouble, worth a retry
        return StreamUnavailable(
            f"{what}: {text}",
            fix="retry; if it persists read the stream manager log (logs/aws.greengrass.StreamManager.log)",
        )


def _says_full(exc: BaseException | None) -> bool:
    """Whether the server refused an append because the stream is full (it has no status code of its own)."""
    # Match the phrase, not a word: a stream or path name may contain "full" (a test's temp folder did).
    return (isinstance(exc, StreamManagerException) and not isinstance(exc, ResourceNotFoundException)
            and " is full (" in str(exc.message or ""))
