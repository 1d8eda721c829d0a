"""The emitter's per-reading path (``Emitter.emit_many``) and the deadband without a band (issue 18)."""

from __future__ import annotations

import itertools

import pytest

import gateway.sources.common as common
from gateway.record import Flag, Quality, Record, Value, normalised
from gateway.sources.common import ConnectionBase, Counters, Emitter
from gateway.sources.deadband import Deadband, DeadbandFilter

T = 1_764_633_600_000_000_000
READINGS: list[list[tuple[str, Value]]] = [
    [("a", 1.0), ("b", float("nan")), ("c", "text"), ("d", None), ("e", 7), ("f", True), ("g", "x" * (1 << 21))],
    [("a", 1.2), ("b", 2.0), ("c", "text"), ("d", None), ("e", 7), ("f", False), ("g", "y")],  # a within the band
    [("a", 2.0), ("b", 2.0), ("c", "other"), ("d", 3.0), ("e", 8), ("f", False), ("g", "y")],
]


def _emitter(clock: itertools.count[int], monkeypatch: pytest.MonkeyPatch) -> tuple[Emitter, Counters]:
    monkeypatch.setattr(common, "now_ns", lambda: next(clock))
    counters = Counters()
    cfg = ConnectionBase(name="plc", tag_prefix="/line/", tag_map={"e": "/mapped/e"},
                         deadband=Deadband(absolute=0.5, heartbeat_s=3600))
    emitter = Emitter(cfg, counters)
    emitter.continue_from(100)
    return emitter, counters


def _without_times(records: list[Record]) -> list[tuple[object, ...]]:
    return [(r.source, r.tag, r.value, r.quality, r.seq, r.kind, r.status, r.flags) for r in records]


@pytest.mark.parametrize("quality", [Quality.GOOD, Quality.UNCERTAIN])
def test_a_reading_emitted_at_once_makes_the_records_emit_makes_one_by_one(
        quality: Quality, monkeypatch: pytest.MonkeyPatch) -> None:
    one, one_counters = _emitter(itertools.count(T, 1000), monkeypatch)
    for reading in READINGS:
        for tag, value in reading:
            one.emit(tag, value, quality)
    by_one = one.take()
    many, many_counters = _emitter(itertools.count(T, 1000), monkeypatch)
    for reading in READINGS:
        many.emit_many(reading, quality)
    at_once = many.take()
    assert _without_times(at_once) == _without_times(by_one)
    assert [r.tag for r in at_once][:6] == ["/line/a", "/line/b", "/line/c", "/line/d", "/mapped/e", "/line/f"]
    assert many.seq == one.seq
    # the counters agree, except when the last good value was read
    assert {**many_counters.as_dict(), "last_good_read_ns": 0} == {**one_counters.as_dict(), "last_good_read_ns": 0}
    # the second reading holds back a (within the band), c, d, e; the third b, f, g
    assert many_counters.values_suppressed == 7
    # one reading, one read time: the records of an answer share their gateway (and source) timestamp
    first = [r for r in at_once if r.gateway_ts_ns == at_once[0].gateway_ts_ns]
    assert len(first) == len(READINGS[0]) and {r.source_ts_ns for r in first} == {first[0].gateway_ts_ns}


def test_a_reading_with_a_source_time_status_and_flags_carries_them_on_every_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    emitter, _ = _emitter(itertools.count(T, 1000), monkeypatch)
    woken: list[str] = []
    emitter.on_pending = lambda: woken.append("pending")
    emitter.on_full = (2, lambda: woken.append("full"))
    emitter.emit_many([("a", 1.0), ("b", 2.0)], Quality.BAD, T - 5, status=0x80000000, flags=Flag.SERVER_TS)
    a, b = emitter.take()
    assert (a.source_ts_ns, a.status, a.flags, a.quality) == (T - 5, 0x80000000, Flag.SERVER_TS, Quality.BAD)
    assert (b.seq, b.source_ts_ns) == (a.seq + 1, T - 5)
    assert woken == ["pending", "full"]  # once each per reading
    emitter.emit_many([], Quality.GOOD)
    assert emitter.pending == [] and woken == ["pending", "full"]


def test_without_a_band_any_change_of_a_large_integer_is_a_change() -> None:
    # a 64-bit counter above 2**53 moved by 1 is the same float: compared as floats it was held back
    band = DeadbandFilter(Deadband())
    assert band.accept("t", 2**60, Quality.GOOD, 0)
    assert band.accept("t", 2**60 + 1, Quality.GOOD, 1)
    assert not band.accept("t", 2**60 + 1, Quality.GOOD, 2)
    assert band.accept("t", 1.0, Quality.GOOD, 3) and not band.accept("t", 1, Quality.GOOD, 4)  # 1 == 1.0


@pytest.mark.parametrize("quality", [Quality.GOOD, Quality.BAD])
def test_numbers_take_the_short_path_to_what_normalised_makes_of_them(quality: Quality,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    raws: list[Value] = [1.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), 0, -7, 2**70, True, False,
                         np.float64("nan"), np.float64(2.5), None, "text"]
    emitter, _ = _emitter(itertools.count(T, 1000), monkeypatch)
    emitter.emit_many([(f"t{i}", raw) for i, raw in enumerate(raws)], quality)
    got = [(r.value, r.quality) for r in emitter.take()]
    want = [normalised(raw, quality) for raw in raws]
    assert len(got) == len(want)
    for (value, q), (want_value, want_q) in zip(got, want, strict=True):
        assert q == want_q and type(value) is type(want_value)
        assert value == want_value or (value != value and want_value != want_value)
