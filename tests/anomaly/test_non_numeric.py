"""Text, array and structure values of a group's member tag (issue #16: OPC UA arrays and structures reach the
detector's input stream): counted per tag and as ``non_numeric:<tag>`` invalid vectors, logged once, never a crash;
META records (a tag's units) are not values and are ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.anomaly import VectorAssembler
from gateway.anomaly.detector import Detector
from gateway.record import Kind, Quality, Value, make_record
from tests.support.anomaly import NS, T0, TAGS, config, group, records


@pytest.mark.parametrize("value", ["text", [1.0, 2.0], {"a": 1.0}], ids=["text", "array", "structure"])
def test_a_non_numeric_member_value_is_counted_not_scored(value: Value, caplog: pytest.LogCaptureFixture) -> None:
    a = VectorAssembler(group())
    row = np.ones(len(TAGS))
    for k in range(3):
        for r in records(row[:-1], T0 + k * NS, TAGS[:-1]):
            a.offer(r)
        a.offer(make_record("plc", "power", value, seq=k, source_ts_ns=T0 + k * NS))
        assert a.poll(T0 + k * NS) == []
    assert a.invalid == {"non_numeric:power": 3}
    assert a.non_numeric_values == {"power": 3}
    assert len([r for r in caplog.records if "not a number" in r.getMessage()]) == 1
    # a number again: scored again
    for r in records(row, T0 + 3 * NS):
        a.offer(r)
    assert len(a.poll(T0 + 3 * NS)) == 1


def test_a_bad_value_stays_bad_whatever_its_type() -> None:
    a = VectorAssembler(group())
    for r in records(np.ones(len(TAGS) - 1), T0, TAGS[:-1]):
        a.offer(r)
    a.offer(make_record("plc", "power", "last text", seq=1, source_ts_ns=T0, quality=Quality.BAD))
    assert a.poll(T0) == []
    assert a.invalid == {"bad:power": 1}


def test_meta_records_of_member_tags_are_not_values() -> None:
    a = VectorAssembler(group())
    for r in records(np.ones(len(TAGS)), T0):
        a.offer(r)
    a.offer(make_record("plc", "power", {"unit": "kW"}, seq=9, source_ts_ns=T0, kind=Kind.META))
    assert len(a.poll(T0)) == 1
    assert a.non_numeric_values == {}


def test_the_detector_reports_the_count_in_its_status(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    det.offer_many([make_record("plc", "power", [1, 2], seq=1, source_ts_ns=T0)])
    det.poll(T0)
    assert det.status()["unit"]["non_numeric_values"] == {"power": 1}
