"""Records into stream messages by count and by encoded size (what :class:`gateway.streams.records.RecordWriter`
appends).

A message holds at most ``max_records`` records and, unless it is one record alone, at most ``MESSAGE_BYTES``
encoded: a batch is encoded once, and only a batch over the size is halved and encoded again, so the usual small
values cost nothing extra. A single record that does not fit even the store's frame limit (``MAX_MESSAGE_BYTES``:
the embedded store's frame limit, which the stream manager fake enforces too; stream manager's own SDK frame limit
is 1 GiB) is written BAD with no value instead of being refused with the whole batch: one oversized value must not
stall every tag of its connection. Sources refuse such values earlier (:data:`gateway.record.MAX_VALUE_BYTES`); this
is the last line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

from gateway.codec import encode_batch
from gateway.record import Quality, Record
from gateway.streams.segments import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# A message's size target: a scan of a few thousand numbers is ~100 KiB; a destination reads up to a hundred
# messages a poll, so this bounds a poll's memory too.
MESSAGE_BYTES = 1 << 20

_logged: set[tuple[str, str]] = set()


def encode_messages(records: Sequence[Record], max_records: int,
                    max_bytes: int = MESSAGE_BYTES) -> Iterator[tuple[bytes, int]]:
    """(payload, number of records in it) for each message ``records`` make, in order."""
    for start in range(0, len(records), max_records):
        yield from _fit(records[start : start + max_records], max_bytes)


def _fit(chunk: Sequence[Record], max_bytes: int) -> Iterator[tuple[bytes, int]]:
    payload = encode_batch(chunk)
    if len(payload) <= max_bytes:
        yield payload, len(chunk)
    elif len(chunk) > 1:
        half = len(chunk) // 2
        yield from _fit(chunk[:half], max_bytes)
        yield from _fit(chunk[half:], max_bytes)
    elif len(payload) <= MAX_MESSAGE_BYTES:
        yield payload, 1  # one record alone may pass the target, never the store's limit
    else:
        r = chunk[0]
        if (r.source, r.tag) not in _logged:  # once per tag: the next value of it is probably as large
            _logged.add((r.source, r.tag))
            log.error("source %s tag %s: a record of %d bytes does not fit a stream message (%d bytes): written "
                      "BAD with no value. Fix: the source should not send values this large (sources refuse "
                      "values over gateway.record.MAX_VALUE_BYTES)", r.source, r.tag, len(payload),
                      MAX_MESSAGE_BYTES)
        yield encode_batch([dataclasses.replace(r, value=None, quality=Quality.BAD)]), 1
