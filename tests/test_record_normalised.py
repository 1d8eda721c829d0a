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


# JSON values (arrays, structures) follow the same rules as scalars, element by element
JSON_CASES: list[tuple[Value, Quality, Value, Quality]] = [
    ([1.0, 2, True, "x", None], Quality.GOOD, [1.0, 2, True, "x", None], Quality.GOOD),
    ({"a": [1, {"b": "c"}], "d": None}, Quality.UNCERTAIN, {"a": [1, {"b": "c"}], "d": None}, Quality.UNCERTAIN),
    ([], Quality.GOOD, [], Quality.GOOD),
    ([1.0, float("nan")], Quality.GOOD, None, Quality.BAD),
    ({"a": [float("inf")]}, Quality.GOOD, None, Quality.BAD),
    (["x" * (MAX_VALUE_BYTES // 2)] * 3, Quality.GOOD, None, Quality.BAD),  # the cap is on the whole JSON text
    ({1: "not text"}, Quality.GOOD, None, Quality.BAD),  # type: ignore[dict-item]
    ([b"bytes"], Quality.GOOD, None, Quality.BAD),  # type: ignore[list-item]
    ([(1, 2)], Quality.GOOD, None, Quality.BAD),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("value", "quality", "value_out", "quality_out"), CASES + JSON_CASES)
def test_every_maker_of_records_normalises_alike(value: Value, quality: Quality, value_out: Value,
                                                  quality_out: Quality) -> None:
    assert normalised(value, quality) == (value_out, quality_out)
    made = make_record("s", "t", value, seq=1, quality=quality)
    emitter = Emitter(ConnectionBase(name="s"), Counters())
    emitter.emit("t", value, quality)
    [emitted] = emitter.take()
    assert (made.value, made.quality) == (emitted.value, emitted.quality) == (value_out, quality_out)
