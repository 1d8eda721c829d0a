"""A lower bound on what any Python destination spends per record before its client library gets the bytes (issue 18).

Issue 18 asks ``publisher.mqtt.ratio_vs_paho`` >= 0.5: ours at least half as fast as paho publishing the payloads
already built. Whatever a destination does, per record it must at least decode the stream message it came in (CBOR:
``cbor2.loads``, with no check of what it decoded and no :class:`~gateway.record.Record` made), compute its id
(BLAKE2b over source, tag, time and sequence number, as :func:`gateway.record.record_id`) and write one JSON text
for it (one f-string with the values as they are: no timestamp formatting, no quality or kind names) as bytes. This
module times exactly that, on the stream messages of the benchmark's own backlog, in one thread: the real
destination does all of it and more (validation, timestamps as text, packing into MQTT messages, the client call).

So with ``floor`` the sum and ``bare`` paho's CPU per record publishing the built payloads, ours costs at least
``bare + floor`` per record, and ``bare / (bare + floor)`` is the highest CPU ratio any destination in Python can
reach on this stream format and payload.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import cbor2

_ID = hashlib.blake2b(digest_size=12)
_ROUNDS = 5


def _once(payloads: Sequence[bytes]) -> tuple[float, int]:
    """CPU seconds and records of one pass over ``payloads``."""
    records = 0
    c0 = time.process_time()
    for payload in payloads:
        strings, rows = cbor2.loads(payload[3:])  # b"FE" and the version byte first (gateway/codec.py)
        # version 1 rows are these 8 fields; version 2 adds status and flags, which this floor leaves out
        for si, ti, value, quality, sts, gts, seq, kind in (rows if payload[2] == 1 else (r[:8] for r in rows)):
            source, tag = strings[si], strings[ti]
            hasher = _ID.copy()
            hasher.update(f"{source}\x1f{tag}\x1f{sts}\x1f{seq}".encode())
            (f'{{"id":"{hasher.hexdigest()}","source":"{source}","tag":"{tag}","value":{value!r},'
             f'"quality":{quality},"kind":{kind},"sourceTs":{sts},"gatewayTs":{gts},"seq":{seq}}}').encode()
        records += len(rows)
    return time.process_time() - c0, records


def floor_us_per_record(payloads: Sequence[bytes]) -> float:
    """The least CPU µs per record of ``_ROUNDS`` passes over ``payloads`` (stream messages of the batch codec)."""
    best = min(_once(payloads) for _ in range(_ROUNDS))
    return best[0] * 1e6 / best[1]
