"""One normalisation path: a source's emitter and make_record give a value the same value and quality."""

from __future__ import annotations

import pytest

from gateway.record import MAX_VALUE_BYTES, Quality, Value, make_record, normalised
from gateway.sources.common import ConnectionBase, Counters, Emitter

CASES: list[tuple[Value, Quality, Value, Quality]] = [
    (1.5, Quality.GOOD, 1.5, Quality.GOOD),
    (float("nan"), Quality.GOOD, None, Quality.BAD),
    (float("-inf"), Quality.UNCERTAIN, None, Quality.BAD),
    (None, Quality.GOOD, None, Quality.BAD),
    (None, Quality.UNCERTAIN, None, Quality.UNCERTAIN),
    ("x" * (MAX_VALUE_BYTES + 1), Quality.GOOD, None, Quality.BAD),
    ("ok", Quality.UNCERTAIN, "ok", Quality.UNCERTAIN),
    (True, Quality.GOOD, True, Quality.GOOD),
    (2**64 - 1, Quality.GOOD, 2**64 - 1, Quality.GOOD),
]


@pytest.mark.parametrize(("value", "quality", "value_out", "quality_out"), CASES)
def test_every_maker_of_records_normalises_alike(value: Value, quality: Quality, value_out: Value,
                                                  quality_out: Quality) -> None:
    assert normalised(value, quality) == (value_out, quality_out)
    made = make_record("s", "t", value, seq=1, quality=quality)
    emitter = Emitter(ConnectionBase(name="s"), Counters())
    emitter.emit("t", value, quality)
    [emitted] = emitter.take()
    assert (made.value, made.quality) == (emitted.value, emitted.quality) == (value_out, quality_out)
