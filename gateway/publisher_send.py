"""What a publisher pump does with one batch, apart from the publisher's state: read the next one ahead, prepare its
requests, and send it so that records the destination refuses for good are isolated (split in halves) instead of
blocking the rest; and the contract of a destination whose answer does not yet make a record safe (``Settling``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from gateway.destinations.base import Destination, DestinationConfigBase, Prepared, Preparing, Router, SendResult
from gateway.errors import DestinationError
from gateway.record import Record
from gateway.streams import ReadBatch, RecordReader


async def settled(future: asyncio.Future[Any] | None) -> None:
    """Wait for a read ahead to finish, whatever its outcome; its batch is dropped."""
    if future is not None:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so that a failed read ahead is not logged as never retrieved


def read_ahead(reader: RecordReader, router: Router, cfg: DestinationConfigBase, preparing: Preparing | None
               ) -> tuple[ReadBatch, list[Record], Prepared | None]:
    """The next batch (read in the pump's read thread), the records its route wants and, with ``preparing``, their
    requests ready to send: the one way a pump reads, ahead or not."""
    batch = reader.poll(max_messages=cfg.batch_messages, timeout_s=0.5, max_bytes=cfg.batch_bytes)
    wanted = router.select(batch.records)
    return batch, wanted, prepare(preparing, wanted) if preparing is not None and wanted else None


def prepare(preparing: Preparing, records: list[Record]) -> Prepared | None:
    """The requests of ``records`` ready to send, or None when preparing them failed (send then tries again)."""
    try:
        return preparing.prepare(records)
    except Exception:  # noqa: BLE001 - a bug: send meets it again and it is logged and retried as a failed delivery
        return None


class Settling(Protocol):
    """A destination whose service's answer does not yet make a record safe (``iotcore``: the nucleus' spooler).

    ``settle(stream, next_seq)`` notes a delivered batch (``None``: nothing new) and returns the position that may
    be committed now (None: none yet) and whether the stream must be read again from its committed position.
    """

    def settle(self, stream: str, next_seq: int | None) -> tuple[int | None, bool]: ...


async def deliver(sink: Destination, records: list[Record], prepared: Prepared | None = None) -> SendResult:
    """Send (``prepared``, when given, is ``records`` ready to go); on a non-retryable failure split the batch
    to isolate the records that cause it."""
    if not records:
        return SendResult()
    try:
        return await (prepared() if prepared is not None else sink.send(records))
    except DestinationError as exc:
        if exc.retryable:
            raise
        if len(records) == 1:
            return SendResult(rejected=[(records[0], str(exc))])
    mid = len(records) // 2
    first = await deliver(sink, records[:mid])
    try:
        second = await deliver(sink, records[mid:])
    except DestinationError as exc:  # retryable: keep what the first half achieved, resend only the rest
        second = SendResult(retry=records[mid:], retry_reason=str(exc))
    return SendResult(first.rejected + second.rejected, first.bytes_sent + second.bytes_sent,
                      first.retry + second.retry, first.retry_reason or second.retry_reason)
