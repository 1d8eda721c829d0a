"""Typed errors of the gateway.

Every error names the thing that failed and carries the fix, so that a log line or a CLI message is enough for the
engineer on site. The ``retryable`` flag is the policy: callers retry retryable errors with backoff and treat the
rest as fatal for that operation (or per record, for :class:`RecordRejected`).

Tree::

    GatewayError
     ├── ConfigError                 bad configuration; never retried
     │    └── EndpointError          an address that is not scheme://host[:port] or host:port
     ├── CodecError                  a stream message that cannot be decoded; the reader skips and counts it
     ├── StreamError
     │    ├── StreamNotFound         the stream does not exist (create it, or check the name)
     │    ├── StreamFull             RejectNewData and max_size reached; retryable once readers catch up
     │    ├── StoreWriteError        the store's disk is full or unwritable; nothing stored is lost
     │    └── StreamUnavailable      stream manager unreachable or timing out; retryable
     ├── SourceError                 a collector's peer failed (retryable) or is misconfigured (not)
     └── DestinationError            a destination failed (retryable) ...
          └── RecordRejected         ... or rejected records for good: dead-letter them
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised on purpose by the gateway."""

    retryable: bool = False

    def __init__(self, message: str, *, fix: str = "", retryable: bool | None = None) -> None:
        self.message = message
        self.fix = fix
        if retryable is not None:
            self.retryable = retryable
        super().__init__(f"{message}. Fix: {fix}" if fix else message)


class ConfigError(GatewayError):
    """Configuration that cannot work. ``problems`` holds one line per bad field."""

    def __init__(self, message: str, *, problems: list[str] | None = None, fix: str = "") -> None:
        self.problems = problems or []
        super().__init__(message, fix=fix)

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        return "\n".join([self.message, *(f"  {p}" for p in self.problems)])


class EndpointError(ConfigError):
    """An endpoint (a URL or ``host:port``) with no host, a port that is not a number, or no port to assume."""


class CodecError(GatewayError):
    """A stream message that is not a valid record batch (corrupt, truncated, or from an unknown version)."""


class StreamError(GatewayError):
    """Base of the stream layer's errors."""


class StreamNotFound(StreamError):
    """The named stream does not exist."""


class StreamFull(StreamError):
    """The stream reached ``max_size_bytes`` under ``RejectNewData``: the append was refused and counted."""

    retryable = True


class StoreWriteError(StreamError):
    """The store could not write (disk full, read-only, permissions). Data already stored is untouched."""

    retryable = True


class StreamUnavailable(StreamError):
    """The stream service cannot be reached or timed out."""

    retryable = True


class SourceError(GatewayError):
    """A data source (PLC, OPC server, gateway service) failed."""


class DestinationError(GatewayError):
    """A destination failed to accept data."""


class RecordRejected(DestinationError):
    """A destination refused specific records for good: they belong in the dead-letter stream."""
