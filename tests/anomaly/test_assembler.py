"""Vector assembly: cadence, on-sample, validity rules, shingling."""

from __future__ import annotations

import math

import numpy as np

from gateway.anomaly import Shingler, VectorAssembler
from gateway.record import make_record
from tests.support.anomaly import NS, T0, TAGS, bad, group, records


def test_cadence_emits_one_vector_per_tick_in_tag_order() -> None:
    a = VectorAssembler(group())
    row = np.arange(len(TAGS), dtype=float)
    out = []
    for k in range(5):
        for r in records(row + k, T0 + k * NS):
            a.offer(r)
        out += a.poll(T0 + k * NS)
    assert [v.ts_ns for v in out] == [T0 + k * NS for k in range(5)]
    np.testing.assert_array_equal(out[-1].values, row + 4)
    assert a.invalid == {}


def test_missing_bad_nan_and_stale_members_make_the_vector_invalid_and_are_counted() -> None:
    a = VectorAssembler(group())
    row = np.ones(len(TAGS))
    # 1. 'power' never delivered
    for r in records(row[:-1], T0, TAGS[:-1]):
        a.offer(r)
    assert a.poll(T0) == []
    assert a.missing_tags() == ["power"]
    # 2. 'power' BAD
    a.offer(bad("power", T0 + NS))
    for r in records(row[:-1], T0 + NS, TAGS[:-1]):
        a.offer(r)
    assert a.poll(T0 + NS) == []
    # 3. 'power' NaN (a collector that passes NaN through as GOOD is still not scored)
    a.offer(make_record("plc", "power", math.nan, seq=1, source_ts_ns=T0 + 2 * NS))
    assert a.poll(T0 + 2 * NS) == []
    # 4. all good, then nothing new for longer than max_age_s (2.5 s): stale
    for r in records(row, T0 + 3 * NS):
        a.offer(r)
    assert len(a.poll(T0 + 3 * NS)) == 1
    assert a.poll(T0 + 6 * NS) == []
    assert a.invalid == {"missing:power": 1, "bad:power": 2, "stale:flow": 1}
    assert a.emitted == 1


def test_records_of_other_tags_and_kinds_are_ignored() -> None:
    a = VectorAssembler(group())
    a.offer(make_record("plc", "unrelated", 1.0, seq=0, source_ts_ns=T0))
    assert a.missing_tags() == TAGS


def test_on_sample_assembles_only_when_a_member_delivers_a_new_value() -> None:
    a = VectorAssembler(group(mode="on_sample", max_age_s=1000))
    row = np.ones(len(TAGS))
    emitted = []
    for k in range(6):
        held = row + (k // 3)  # analyzer: a new sample every third record, held in between
        for r in records(held, T0 + k * NS):
            a.offer(r)
        emitted.append(len(a.poll(T0 + k * NS)))
    assert emitted == [1, 0, 0, 1, 0, 0]


def test_shingler_concatenates_consecutive_vectors_and_restores_from_state() -> None:
    s = Shingler(3)
    assert s.push(np.array([1.0])) is None
    assert s.push(np.array([2.0])) is None
    np.testing.assert_array_equal(s.push(np.array([3.0])), [1.0, 2.0, 3.0])
    restored = Shingler(3, s.state())
    np.testing.assert_array_equal(restored.push(np.array([4.0])), [2.0, 3.0, 4.0])
