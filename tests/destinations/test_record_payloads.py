"""What every destination sends of the issue #16 record fields, read back from its peer (the conformance harnesses):
``status``/``statusName`` when not Good, ``flags`` by name when set, arrays and structures as JSON, and the ``meta``
header (MQTT, IoT Core, Kinesis). SiteWise: arrays as JSON text within its 1,024 characters, longer ones refused
with the reason, META records left out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.destinations.payload import dumps, record_json
from gateway.record import Flag, Kind, Quality, Record, Value, make_record
from tests.support.destination_harness import HARNESSES, TAGS, TEXT_TAG, Harness, SiteWiseHarness, send_retrying, until

BAD_SENSOR = 0x808C0000
META: dict[str, Value] = {"unit": "degC", "unit_id": 4408652, "eu_range": [0.0, 100.0],
                          "description": "Reactor temperature"}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    yield HARNESSES[request.param](request, tmp_path, monkeypatch)


def batch() -> list[Record]:
    now = time.time_ns() - 10_000
    return [
        make_record("plc-a", TAGS[0], META, seq=1, source_ts_ns=now, kind=Kind.META),
        make_record("plc-a", TAGS[0], 21.5, seq=2, source_ts_ns=now + 1, quality=Quality.BAD, status=BAD_SENSOR),
        make_record("plc-a", TAGS[1], 3.25, seq=3, source_ts_ns=now + 2, flags=Flag.BACKFILL | Flag.SERVER_TS),
        make_record("plc-a", TAGS[2], [1.0, 2.5, -3.0], seq=4, source_ts_ns=now + 3, flags=Flag.OVERFLOW,
                    status=0x00000480),
        make_record("plc-a", TAGS[3], {"name": "A", "steps": [{"t": 10, "sp": 80.5}]}, seq=5, source_ts_ns=now + 4),
        make_record("plc-a", TAGS[4], 7.0, seq=6, source_ts_ns=now + 5),
    ]


def _send(harness: Harness, records: list[Record],
          expect: int | None = None) -> tuple[list[tuple[Record, str]], list[dict[str, Any]]]:
    """Send ``records`` in one call; (what was refused, the peer's JSON documents) once ``expect`` records (default:
    all not refused) are at the peer."""
    out: dict[str, Any] = {}

    async def main() -> None:
        async with harness.running():
            dest = harness.config().build()
            await dest.start()
            try:
                result = await send_retrying(dest, records)
                out["result"] = result
                sent = expect if expect is not None else len(records) - len(result.rejected) - len(result.retry)
                await until(lambda: harness.delivered() >= sent, 15, f"{sent} records at the peer")
                out["bodies"] = [] if harness.bodies_skip else harness.bodies()
            finally:
                await dest.close(5.0)

    asyncio.run(main())
    return out["result"].rejected, out["bodies"]


def test_status_flags_and_json_values_reach_the_peer_as_sent(harness: Harness) -> None:
    if harness.bodies_skip:
        pytest.skip(harness.bodies_skip)
    records = batch()
    rejected, bodies = _send(harness, records)
    assert not rejected
    got = {g["id"]: g for body in bodies for g in body["records"]}
    assert set(got) == {r.id for r in records}
    for r in records:
        assert got[r.id] == json.loads(dumps(record_json(r)))
    pressure, level, profile, recipe, plain = (got[r.id] for r in records[1:])
    assert (pressure["status"], pressure["statusName"]) == (BAD_SENSOR, "BadSensorFailure")
    assert level["flags"] == ["backfill", "server_ts"] and "status" not in level
    assert profile["value"] == [1.0, 2.5, -3.0] and profile["flags"] == ["overflow"]
    assert profile["statusName"] == "Good"  # an info bit only: the number says Overflow, the name says Good
    assert recipe["value"] == {"name": "A", "steps": [{"t": 10, "sp": 80.5}]}
    assert not {"status", "statusName", "flags"} & set(plain)
    assert got[records[0].id]["kind"] == "meta" and got[records[0].id]["value"] == META


def test_messages_carry_the_metadata_of_their_tags(harness: Harness) -> None:
    if harness.bodies_skip or harness.type == "file":
        pytest.skip(harness.bodies_skip or "a file holds one record a line: no message, no header")
    records = batch()
    _, bodies = _send(harness, records)
    value_of_tag0 = records[1].id
    [carrying] = [b for b in bodies if any(g["id"] == value_of_tag0 for g in b["records"])]
    assert carrying["meta"] == [{"source": "plc-a", "tag": TAGS[0], "meta": META}]
    for body in bodies:  # no other tag has metadata: no header without a tag of tag0 that is not META itself
        if not any(g["tag"] == TAGS[0] and g["kind"] != "meta" for g in body["records"]):
            assert "meta" not in body


def test_the_metadata_is_remembered_for_later_batches(harness: Harness) -> None:
    if harness.bodies_skip or harness.type == "file":
        pytest.skip(harness.bodies_skip or "a file holds one record a line: no message, no header")
    records = batch()
    later = make_record("plc-a", TAGS[0], 22.0, seq=7, source_ts_ns=records[-1].source_ts_ns + 1)
    out: dict[str, Any] = {}

    async def main() -> None:
        async with harness.running():
            dest = harness.config().build()
            await dest.start()
            try:
                await send_retrying(dest, records)
                await send_retrying(dest, [later])
                await until(lambda: harness.delivered() >= len(records) + 1, 15, "both batches at the peer")
                out["bodies"] = harness.bodies()
            finally:
                await dest.close(5.0)

    asyncio.run(main())
    [alone] = [b for b in out["bodies"] if [g["id"] for g in b["records"]] == [later.id]]
    assert alone["meta"] == [{"source": "plc-a", "tag": TAGS[0], "meta": META}]


def test_sitewise_sends_short_json_as_text_refuses_long_json_with_the_reason_and_leaves_meta_out(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = SiteWiseHarness(request, tmp_path, monkeypatch)
    now = time.time_ns() - 10_000
    short = make_record("plc-a", TEXT_TAG, [1.5, {"a": "é"}], seq=1, source_ts_ns=now)
    long = make_record("plc-a", TEXT_TAG, [float(i) for i in range(300)], seq=2, source_ts_ns=now + 1)
    meta = make_record("plc-a", TAGS[0], META, seq=3, source_ts_ns=now + 2, kind=Kind.META)
    value = make_record("plc-a", TAGS[0], 21.5, seq=4, source_ts_ns=now + 3, status=0x40900000,
                        quality=Quality.UNCERTAIN)
    rejected, _ = _send(harness, [short, long, meta, value], expect=2)
    assert [r for r, _ in rejected] == [long]
    reason = rejected[0][1]
    assert "array of" in reason and "1024" in reason and "one tag per element" in reason
    assert harness.fake.values[TEXT_TAG] == [(now, '[1.5,{"a":"é"}]', "GOOD")]
    assert harness.fake.values[TAGS[0]] == [(now + 3, 21.5, "UNCERTAIN")]  # META left out, not refused
