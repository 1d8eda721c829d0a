"""The stream contract: what the embedded store and the stream manager adapter both offer.

It keeps stream manager's semantics so that code tested on the embedded store behaves the same on a device:

- ``append`` returns the message's sequence number; sequence numbers of a stream start at 0 and have no gaps;
- ``read`` does not consume: every reader keeps its own position (see ``positions.py``);
- reading below the oldest retained message starts at the oldest (data dropped by ``OverwriteOldestData`` or time
  to live shows up to the reader as a gap in sequence numbers, which it counts);
- a full stream applies its ``strategy_on_full``: ``RejectNewData`` raises :class:`~gateway.errors.StreamFull`,
  ``OverwriteOldestData`` drops the oldest data; both are counted. A full ``RejectNewData`` stream accepts data
  again once its readers caught up: the embedded store frees the segments every reader committed past (readers:
  the stream's position files); stream manager frees only by time to live, so its adapter refuses
  ``RejectNewData`` without ``ttl_s`` (docs/publisher.md, "Offline buffering").

Implementations are synchronous (both the file store and the stream manager SDK block); async callers go through
:class:`gateway.aio.Offload`, which runs them off the event loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024 * 1024


class StrategyOnFull(str, enum.Enum):
    """What a full stream does with a new append (stream manager's names)."""

    REJECT_NEW_DATA = "RejectNewData"
    OVERWRITE_OLDEST_DATA = "OverwriteOldestData"


class Persistence(str, enum.Enum):
    """Where stream manager keeps a stream. The embedded store is always on disk."""

    FILE = "File"
    MEMORY = "Memory"


class StreamSpec(BaseModel):
    """Definition of one stream: the offline buffer between a writer and its readers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9_ ,.\-]{1,255}$",
        description="Stream name: letters, digits, space, comma, dot, dash, underscore; at most 255 characters.",
    )
    max_size_bytes: int = Field(
        default=256 * MiB,
        ge=1024,
        description="Largest size the stream may reach on disk before strategy_on_full applies. Size it for the "
        "longest site-link outage you must ride through (bytes a second x seconds).",
    )
    segment_size_bytes: int = Field(
        default=16 * MiB,
        ge=1024,
        description="Size of one segment file; data is dropped (overwrite, time to live) a whole segment at a time. "
        "With flush_on_write the embedded store reserves the newest segment's disk blocks ahead, so allow one "
        "segment of disk beyond max_size_bytes per stream.",
    )
    ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="Drop data older than this many seconds (whole segments); null keeps data until size forces.",
    )
    strategy_on_full: StrategyOnFull = Field(
        default=StrategyOnFull.OVERWRITE_OLDEST_DATA,
        description="OverwriteOldestData keeps the newest data (oldest dropped, counted); RejectNewData keeps the "
        "oldest (appends refused, counted).",
    )
    persistence: Persistence = Field(
        default=Persistence.FILE,
        description="File survives restarts; Memory (stream manager only) is lost on restart.",
    )
    flush_on_write: bool = Field(
        default=True,
        description="fsync every append: survives power loss, not only process crashes. One append is one batch, "
        "so the cost is per batch, not per value.",
    )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as read back: its sequence number, ingest time (ms since epoch) and bytes."""

    seq: int
    ts_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What ``describe`` reports about a stream.

    ``oldest_seq`` is the first retained sequence number and ``next_seq`` the one the next append will get, so a
    stream holds ``next_seq - oldest_seq`` messages. ``dropped_messages`` counts messages removed by overwrite or
    time to live; ``rejected_appends`` counts appends refused under RejectNewData. ``lost_messages`` counts messages
    lost to damaged bytes on disk and ``corrupt_bytes`` those bytes (embedded store: persistent, cumulative).
    """

    name: str
    oldest_seq: int
    next_seq: int
    total_bytes: int
    dropped_messages: int
    rejected_appends: int
    spec: StreamSpec
    lost_messages: int = 0
    corrupt_bytes: int = 0

    @property
    def message_count(self) -> int:
        return self.next_seq - self.oldest_seq


class StreamStore(Protocol):
    """The contract every stream implementation keeps. Methods block; they are safe to call from threads."""

    def create_stream(self, spec: StreamSpec) -> None:
        """Create the stream, or update its definition if it exists (idempotent)."""

    def append(self, stream: str, payload: bytes) -> int:
        """Append one message durably and return its sequence number."""

    def read(
        self, stream: str, start_seq: int, *, min_count: int = 1, max_count: int = 100, timeout_s: float = 0.0,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        """Read up to ``max_count`` messages from ``start_seq`` on (or the oldest retained, if later), and with
        ``max_bytes`` no more than their payloads fit in (but always the first: one message may be larger).

        Waits up to ``timeout_s`` for ``min_count`` messages; after the timeout, or once ``max_bytes`` is reached,
        returns what there is, possibly nothing. Never consumes.
        """

    def describe(self, stream: str) -> StreamInfo:
        """Sizes, sequence range and drop counters of a stream."""

    def list_streams(self) -> list[str]:
        """Names of all streams."""

    def delete_stream(self, stream: str) -> None:
        """Delete a stream and its data."""

    def close(self) -> None:
        """Release connections and files."""
