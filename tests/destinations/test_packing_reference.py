"""The packing of MQTT, IoT Core and Kinesis payloads is byte for byte what it was before it was made cheaper (issue
18): ``record_items`` against ``dumps(record_json(r))`` over batches whose records share times or not, and
``pack_with_meta`` against the object-per-message packer it replaced (kept here as the reference), over random
items, metadata headers, limits and record counts."""

from __future__ import annotations

import random

import pytest

from gateway.destinations.kinesis import KinesisConfig
from gateway.destinations.payload import (
    ENVELOPE_OVERHEAD,
    META_OVERHEAD,
    MetaCache,
    dumps,
    envelope,
    pack_with_meta,
    record_items,
    record_json,
)
from gateway.record import Flag, Kind, Quality, Record, Value

T0 = 1_764_756_000_123_456_789


class _Chunk:
    """The packer's message object as it was (reference)."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.records: list[Record] = []
        self.meta: dict[tuple[str, str], bytes] = {}
        self.size = len(ENVELOPE_OVERHEAD)

    def cost(self, item: bytes, meta: tuple[tuple[str, str], bytes] | None) -> int:
        extra = 0
        if meta is not None and meta[0] not in self.meta:
            extra = len(meta[1]) + 1 + (META_OVERHEAD if not self.meta else 0)
        return len(item) + 1 + extra

    def add(self, item: bytes, r: Record, meta: tuple[tuple[str, str], bytes] | None) -> None:
        self.size += self.cost(item, meta)
        self.items.append(item)
        self.records.append(r)
        if meta is not None:
            self.meta.setdefault(*meta)


def _reference_pack(pairs: list[tuple[bytes, Record]], limit: int, cache: MetaCache | None,
                    max_records: int | None = None) -> list[tuple[bytes, list[Record]]]:
    out: list[tuple[bytes, list[Record]]] = []
    chunk = _Chunk()
    for item, r in pairs:
        meta = cache.entry(r) if cache is not None else None
        full = max_records is not None and len(chunk.items) >= max_records
        if chunk.items and (full or chunk.size + chunk.cost(item, meta) > limit):
            out.append((envelope(chunk.items, list(chunk.meta.values())), chunk.records))
            chunk = _Chunk()
        if meta is not None and chunk.size + chunk.cost(item, meta) > limit:
            meta = None
        chunk.add(item, r, meta)
    if chunk.items:
        out.append((envelope(chunk.items, list(chunk.meta.values())), chunk.records))
    return out


def _batch(rng: random.Random, n: int, sources: list[str], tags: list[str], longest: int = 300) -> list[Record]:
    """Records of random readings: the values of one reading share their times, as a collector writes them."""
    out: list[Record] = []
    ts = T0
    while len(out) < n:
        ts += rng.choice((1, 999, 10**6, 10**9 + 7, 3 * 10**9))
        gw = ts + rng.randrange(0, 2 * 10**9)
        for _ in range(rng.randrange(1, 8)):
            values: list[Value] = [rng.uniform(-1e6, 1e6), rng.randrange(-(2**40), 2**40), True, None, "text é",
                                   [1.5, 2], {"a": 1}, "x" * rng.randrange(0, longest)]
            value = rng.choice(values)
            kind = rng.choice([Kind.VALUE] * 6 + [Kind.META, Kind.SCORE])
            if kind == Kind.META:
                value = {"unit": rng.choice(["degC", "bar", "°F"]), "range": [0, rng.randrange(1, 500)]}
            own = rng.random() < 0.2  # now and then a record with times of its own
            out.append(Record(rng.choice(sources), rng.choice(tags), value,
                              Quality.BAD if value is None else rng.choice(list(Quality)),
                              ts + rng.randrange(1, 10**10) if own else ts, gw, len(out) + 1, kind,
                              rng.choice([0, 0, 0, 0x808C0000]), rng.choice([0, 0, 0, int(Flag.BACKFILL)])))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_record_items_are_dumps_of_record_json(seed: int) -> None:
    rng = random.Random(seed)
    records = _batch(rng, 300, ["plc-1", "plc é 2"], ["a", "b/c", 'q"t', "温度"])
    assert record_items(records) == [dumps(record_json(r)) for r in records]


@pytest.mark.parametrize("seed", range(40))
def test_pack_with_meta_packs_as_before(seed: int) -> None:
    rng = random.Random(seed)
    records = _batch(rng, rng.randrange(1, 400), ["plc-1", "plc-2"], [f"t{i}" for i in range(rng.randrange(1, 6))])
    cache = MetaCache(limit=rng.choice([1, 3, 100]))
    cache.observe(records[: rng.randrange(0, len(records) + 1)])
    pairs = list(zip(record_items(records), records, strict=True))
    limit = rng.choice([60, 200, 400, 1000, 4000, 1 << 20])
    max_records = rng.choice([None, 1, 2, 7, 500])
    for packer_cache in (cache, None, MetaCache()):
        assert pack_with_meta(pairs, limit, packer_cache, max_records) == \
            _reference_pack(pairs, limit, packer_cache, max_records)


@pytest.mark.parametrize("seed", range(10))
def test_kinesis_aggregates_as_before(seed: int) -> None:
    rng = random.Random(seed)
    records = _batch(rng, 500, ["plc-1", "plc-2", ""], ["a", "b", "c" * 300, ""], longest=5000)
    cfg = KinesisConfig(name="k", stream_name="s", aws={"region": "us-east-1"},
                        partition_key=rng.choice(["tag", "source"]), max_record_bytes=rng.choice([1024, 4096]),
                        records_per_kinesis_record=rng.choice([1, 10, 500]))
    queues, refused = cfg.build().aggregates(records)
    # the reference: the same meta cache, then per key in order, refusing items larger than a Kinesis record
    cache = MetaCache()
    cache.observe(records)
    keyed: dict[str, list[tuple[bytes, Record]]] = {}
    expected_refused = []
    for r in records:
        key = (r.tag if cfg.partition_key == "tag" else r.source)[:256] or "-"
        item = dumps(record_json(r))
        if len(item) + len(ENVELOPE_OVERHEAD) + len(key.encode()) > cfg.max_record_bytes:
            expected_refused.append(r)
            continue
        keyed.setdefault(key, []).append((item, r))
    assert expected_refused, "no record too large for a Kinesis record: the refusal path is not exercised"
    assert [r for r, _ in refused] == expected_refused
    # in order too: the keys' order is the order of a call's entries
    assert list(queues.items()) == [(key, _reference_pack(pairs, cfg.max_record_bytes - len(key.encode()), cache,
                                                          cfg.records_per_kinesis_record))
                                    for key, pairs in keyed.items()]


def test_kinesis_keys_in_the_order_of_their_first_record_sent() -> None:
    # a key whose first record is refused comes after a key whose record was sent before its next one: the order of
    # the keys is the order of a call's entries
    sink = KinesisConfig(name="k", stream_name="s", aws={"region": "us-east-1"}, max_record_bytes=1024).build()
    records = [Record("p", "K1", "x" * 2000, Quality.GOOD, T0, T0, 1), Record("p", "K2", 1.0, Quality.GOOD, T0, T0, 2),
               Record("p", "K1", 2.0, Quality.GOOD, T0, T0, 3)]
    queues, refused = sink.aggregates(records)
    assert [r.seq for r, _ in refused] == [1]
    assert list(queues) == ["K2", "K1"]
