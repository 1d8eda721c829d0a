"""``record_item`` (the JSON item of one record in every text destination's payload) is byte for byte
``dumps(record_json(r))``: it builds the same text in one formatted string because the dict and ``json.dumps`` cost
more than half of the publisher's CPU per record (issue 18). Payload formats must not move, so every kind of field
and value is compared here, and the destinations' payloads are checked to be made of it."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from gateway.destinations.kinesis import KinesisConfig
from gateway.destinations.payload import dumps, pack_by_topic, record_item, record_items, record_json
from gateway.record import Flag, Kind, Quality, Record, Value

T0 = 1_764_756_000_123_456_789  # 2025-12-03, with nanoseconds

VALUES: list[Value] = [
    0.0, -0.0, 1.0, 0.1, 6.8500000000000005, 1e16, 1e-7, 123456789.125, 1.7976931348623157e308, 5e-324, -2.5e-300,
    0, 1, -1, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), True, False, None,
    "", "plain", 'quote " and \\ backslash', "tab\tnew\nline\r\x00\x1f\x7f", "é ü ß 温度 🙂", "\u2028\u2029",
    [], [1.0, 2.5, -3.0], [True, None, "x", [1, [2]]], {}, {"name": "A", "steps": [{"t": 10, "sp": 80.5}]},
    {"é": "🙂", "q\"k": [0.1, None]},
]
NAMES = ["plc-1", "/site/line1/tag001", "Reactor/Pressure", "温度/センサー", 'odd "name" \\ here', "tab\tname", "🙂"]


def _records() -> list[Record]:
    out = []
    for i, value in enumerate(VALUES):
        quality = Quality.BAD if value is None else list(Quality)[i % 3]
        out.append(Record(NAMES[i % len(NAMES)], NAMES[(i + 1) % len(NAMES)], value, quality, T0 + i * 999_999_937,
                          T0 + i * 7, i, list(Kind)[i % len(Kind)]))
    for status in (0x808C0000, 0x00000480, 0x80000000, 0xFFFFFFFF, 1):
        out.append(Record("s", "t", 1.5, Quality.UNCERTAIN, T0, T0, 7, Kind.VALUE, status, 0))
    for flags in (int(Flag.BACKFILL), int(Flag.OVERFLOW | Flag.SERVER_TS), 0x80, 0xFFFFFFFF):
        out.append(Record("s", "t", 2.5, Quality.GOOD, T0, T0, 8, Kind.VALUE, 0, flags))
    out.append(Record("s", "t", 3.5, Quality.GOOD, T0, T0, 9, Kind.SCORE, 0x808C0000, int(Flag.BACKFILL)))
    for ts in (0, 1, 999_999_999, 1_000_000_000, 2**63 - 1):  # the epoch, sub-second, the largest int64
        out.append(Record("s", "t", 4.5, Quality.GOOD, ts, ts, 10, Kind.VALUE))
    return out


@pytest.mark.parametrize("record", _records(), ids=lambda r: f"{r.kind.name}-{type(r.value).__name__}-{r.seq}")
def test_record_item_is_dumps_of_record_json(record: Record) -> None:
    assert record_item(record) == dumps(record_json(record))


def test_non_finite_floats_are_written_as_json_dumps_writes_them() -> None:
    # the codec refuses them, but a record made in-process (a metric) could carry one: same bytes as before
    for value in (math.nan, math.inf, -math.inf):
        record = Record("s", "t", value, Quality.BAD, T0, T0, 1)
        assert record_item(record) == dumps(record_json(record))


def test_random_floats_and_timestamps() -> None:
    rng = random.Random(18)
    for _ in range(5000):
        value = struct.unpack("<d", rng.randbytes(8))[0]
        if not math.isfinite(value):
            continue
        ts = rng.randrange(0, 2**63)
        record = Record("plc", "tag", value, Quality.GOOD, ts, rng.randrange(0, 2**63), rng.randrange(0, 2**63))
        assert record_item(record) == dumps(record_json(record))


def test_a_batch_whose_times_share_seconds_or_jump_between_them() -> None:
    # record_items keeps the text of the last second across records: neighbours in one second, in the next one,
    # back again, under one second and at the largest int64 must each get their own time
    second = 1_000_000_000
    times = [T0, T0 + 1, T0 + 1, T0 + second, T0 + 1, 0, 999_999_999, second, second - 1, 2 * second, 2**63 - 1, T0,
             T0 - T0 % second, T0 - T0 % second - 1]
    rng = random.Random(7)
    times += [T0 + rng.randrange(-3 * second, 3 * second) for _ in range(500)]
    records = [Record("plc", "tag", 1.5, Quality.GOOD, ts, T0, i) for i, ts in enumerate(times)]
    assert record_items(records) == [dumps(record_json(r)) for r in records]


def test_mqtt_and_kinesis_payloads_are_made_of_record_items() -> None:
    records = [r for r in _records() if r.kind != Kind.META]
    packed, refused = pack_by_topic(records, "t/{source}/{kind}", {}, 128 * 1024)
    assert not refused
    for _topic, payload, recs in packed:
        assert payload == b'{"records":[' + b",".join(dumps(record_json(r)) for r in recs) + b"]}"
    sink = KinesisConfig(name="k", stream_name="s", aws={"region": "us-east-1"}).build()
    queues, refused = sink.aggregates(records)
    assert not refused
    for aggregates in queues.values():
        for data, recs in aggregates:
            assert json.loads(data) == {"records": [record_json(r) for r in recs]}
            assert data == b'{"records":[' + b",".join(dumps(record_json(r)) for r in recs) + b"]}"
