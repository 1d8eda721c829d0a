"""Records over streams: a writer that batches records into messages, and a reader with a durable position.

The reader separates reading from committing: a destination reads a batch, delivers it, and commits only what the
service accepted. Corrupt messages are skipped and counted (logged once); data the stream dropped before this
reader got to it (overwrite, time to live) shows up as a gap in sequence numbers and is counted as lost, durably and
once per gap, beside the reader's position (see :mod:`gateway.streams.positions`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.codec import decode_batch
from gateway.errors import CodecError
from gateway.record import Record
from gateway.streams.base import StreamStore
from gateway.streams.batches import encode_messages
from gateway.streams.positions import PositionStore

log = logging.getLogger(__name__)

# Keep one message well under stream manager's limits and a destination's appetite; a scan batch of a few
# thousand values fits.
MAX_RECORDS_PER_MESSAGE = 2000


class RecordWriter:
    """Appends records to one stream, one message per batch (split above ``MAX_RECORDS_PER_MESSAGE``)."""

    def __init__(self, store: StreamStore, stream: str) -> None:
        self.store = store
        self.stream = stream
        self.records_written = 0
        self.messages_written = 0

    def write(self, records: Sequence[Record]) -> int:
        """Append the records; return the sequence number of the last message (-1 if there was nothing)."""
        seq = -1
        for payload, count in encode_messages(records, MAX_RECORDS_PER_MESSAGE):  # split by count and by size
            seq = self.store.append(self.stream, payload)
            self.records_written += count
            self.messages_written += 1
        return seq


@dataclass(slots=True)
class ReadBatch:
    """What one poll returned: the records, and the position to commit once they are handled."""

    records: list[Record]
    next_seq: int
    first_seq: int
    messages: int = 0
    corrupt: int = 0
    lost: int = 0
    # (seq, records) per message, for callers that must commit part of a batch
    by_message: list[tuple[int, list[Record]]] = field(default_factory=list)
    # (seq, payload, why) of each message that is not a valid record batch, for the caller to dead-letter
    poison: list[tuple[int, bytes, str]] = field(default_factory=list)


class RecordReader:
    """Reads records from one stream for one named reader, with a durable position."""

    def __init__(
        self,
        store: StreamStore,
        stream: str,
        reader: str,
        positions: PositionStore,
        *,
        start: Literal["oldest", "latest"] = "oldest",
    ) -> None:
        self.store = store
        self.stream = stream
        self.reader = reader
        self.positions = positions
        committed = positions.get(reader, stream)
        if committed is None:
            committed = 0 if start == "oldest" else store.describe(stream).next_seq
        self.committed = committed
        self.position = committed
        self.records_read = 0
        self.corrupt_messages_read = 0
        self.messages_lost = 0

    def poll(self, *, max_messages: int = 100, timeout_s: float = 1.0, max_bytes: int | None = None) -> ReadBatch:
        """Read up to ``max_messages`` messages after the current read position (not committed), and with
        ``max_bytes`` only as many as their encoded size fits in (at least one: see ``StreamStore.read``)."""
        messages = self.store.read(
            self.stream, self.position, min_count=1, max_count=max_messages, timeout_s=timeout_s, max_bytes=max_bytes
        )
        batch = ReadBatch([], self.position, self.position)
        expected = self.position
        for msg in messages:
            if msg.seq > expected:
                self._lost(msg.seq - expected, expected)
                batch.lost += msg.seq - expected
            expected = msg.seq + 1
            batch.messages += 1
            try:
                records = decode_batch(msg.payload)
            except CodecError as exc:
                batch.corrupt += 1
                batch.poison.append((msg.seq, msg.payload, exc.message))
                self.corrupt_messages_read += 1
                if self.corrupt_messages_read == 1 or self.corrupt_messages_read % 1000 == 0:
                    log.error("%s on %r: skipped message %d (%d so far): %s",
                              self.reader, self.stream, msg.seq, self.corrupt_messages_read, exc)
                continue
            batch.records.extend(records)
            batch.by_message.append((msg.seq, records))
        if messages:
            batch.first_seq = messages[0].seq
        batch.next_seq = expected
        self.position = expected
        self.records_read += len(batch.records)
        return batch

    def commit(self, next_seq: int | None = None) -> None:
        """Make the position durable: everything before ``next_seq`` (default: all read so far) is handled."""
        target = self.position if next_seq is None else next_seq
        if target != self.committed:
            self.positions.commit(self.reader, self.stream, target)
            self.committed = target

    def rewind(self) -> None:
        """Go back to the committed position, to read again what was not handled."""
        self.position = self.committed

    def backlog(self) -> int:
        """Messages in the stream this reader has not committed."""
        info = self.store.describe(self.stream)
        return max(0, info.next_seq - max(self.committed, info.oldest_seq))

    def _lost(self, n: int, at: int) -> None:
        """Count a gap once, durably (``positions.count_gap``): the count outlives this process and is shown by
        gatewayctl status, buffer and doctor until acknowledged; a re-read of the same gap is not counted again."""
        try:
            new = self.positions.count_gap(self.reader, self.stream, at, at + n)
        except OSError as exc:  # a read-only or full disk: count it here at least, and say so
            new = n
            log.error("%s on %r: could not record %d lost messages durably: %s", self.reader, self.stream, n, exc)
        self.messages_lost += new
        if new:
            log.warning(
                "%s on %r: %d messages from seq %d were dropped by the stream before they were read (stream full "
                "with OverwriteOldestData, or time to live); raise max_size_bytes to ride out longer outages, then "
                "gatewayctl buffer --ack-losses",
                self.reader, self.stream, new, at + n - new,
            )
