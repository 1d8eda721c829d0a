"""The record model of issue #16: status, flags, JSON values, META records, the id rule and status code names."""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import re
from dataclasses import MISSING, FrozenInstanceError, fields, replace
from pathlib import Path

import pytest

from devkit.peers import ROOT
from gateway import statuscodes
from gateway.record import (
    MAX_VALUE_BYTES,
    MAX_VALUE_DEPTH,
    Flag,
    Kind,
    Quality,
    Record,
    Value,
    flag_names,
    json_problem,
    make_record,
    record_id,
)
from gateway.sources.common import ConnectionBase, Counters, Emitter
from gateway.sources.deadband import Deadband

T = 1_764_633_600_123_456_789
BAD_SENSOR = 0x808C0000


def test_new_fields_come_after_kind_and_default_to_zero() -> None:
    names = [f.name for f in fields(Record)]
    assert names[:8] == ["source", "tag", "value", "quality", "source_ts_ns", "gateway_ts_ns", "seq", "kind"]
    assert names[8:] == ["status", "flags"]
    r = Record("s", "t", 1.0, Quality.GOOD, T, T, 1, Kind.VALUE)  # positional construction as before
    assert (r.status, r.flags) == (0, 0)
    assert not hasattr(r, "__dict__")  # still slotted: tens of thousands a second


def test_make_record_carries_status_and_flags() -> None:
    r = make_record("s", "t", 1.0, seq=1, source_ts_ns=T, quality=Quality.BAD, status=BAD_SENSOR,
                    flags=Flag.BACKFILL | Flag.SERVER_TS)
    assert (r.status, r.flags) == (BAD_SENSOR, 5)
    assert flag_names(r.flags) == ["backfill", "server_ts"]
    assert flag_names(Flag.OVERFLOW | 64) == ["overflow", "0x40"]  # a newer writer's flag is shown, not lost
    assert flag_names(0) == []


def test_kind_meta_is_four() -> None:
    assert int(Kind.META) == 4 and Kind(4) is Kind.META


def test_json_problem_says_why() -> None:
    assert json_problem([1, 2]) is None
    assert "NaN" in str(json_problem([float("nan")]))
    assert "field name" in str(json_problem({2: 1}))  # type: ignore[dict-item]
    assert "bytes" in str(json_problem([b""]))  # type: ignore[list-item]
    deep: Value = 1
    for _ in range(MAX_VALUE_DEPTH + 2):
        deep = [deep]
    assert "deeper" in str(json_problem(deep))
    assert "over the" in str(json_problem(["x" * (MAX_VALUE_BYTES + 1)]))


def test_an_oversize_array_is_counted_like_an_oversize_string() -> None:
    counters = Counters()
    emitter = Emitter(ConnectionBase(name="s"), counters)
    emitter.emit("t", ["x" * 1000] * 2000, Quality.GOOD)
    [r] = emitter.take()
    assert (r.value, r.quality) == (None, Quality.BAD)
    assert counters.extra["oversize_values_read"] == 1


def test_the_emitter_puts_status_and_flags_on_the_record() -> None:
    emitter = Emitter(ConnectionBase(name="plc"), Counters())
    emitter.emit("t", 3.5, Quality.BAD, T, status=BAD_SENSOR, flags=Flag.OVERFLOW)
    emitter.emit("u", [1, 2], Quality.GOOD, T)
    a, b = emitter.take()
    assert (a.status, a.flags, a.source_ts_ns) == (BAD_SENSOR, Flag.OVERFLOW, T)
    assert (b.status, b.flags, b.value) == (0, 0, [1, 2])


def test_emit_meta_makes_a_meta_record_past_the_deadband() -> None:
    emitter = Emitter(ConnectionBase(name="plc", deadband=Deadband(heartbeat_s=3600)), Counters())
    meta: dict[str, Value] = {"unit": "degC", "eu_range": [0.0, 100.0]}
    emitter.emit("t", 1.0, Quality.GOOD, T)
    emitter.emit_meta("t", meta, T)
    emitter.emit("t", 1.0, Quality.GOOD, T + 1)  # the META record did not reset the tag's deadband state
    records = emitter.take()
    assert [(r.kind, r.value) for r in records] == [(Kind.VALUE, 1.0), (Kind.META, meta)]


# -- the id rule ---------------------------------------------------------------------------------------------------

def _live(value: Value, seq: int, ts: int = T) -> Record:
    return make_record("plc", "/a/b", value, seq=seq, source_ts_ns=ts, gateway_ts_ns=ts + 10, flags=Flag.SERVER_TS)


def test_a_value_read_live_and_again_from_history_is_one_id() -> None:
    live = _live([1.5, 2.5], seq=100)
    backfilled = make_record("plc", "/a/b", [1.5, 2.5], seq=900, source_ts_ns=T, gateway_ts_ns=T + 99,
                             flags=Flag.BACKFILL | Flag.SERVER_TS)
    assert live.id == backfilled.id
    only_backfill_flag = make_record("plc", "/a/b", [1.5, 2.5], seq=901, source_ts_ns=T, flags=Flag.BACKFILL)
    assert only_backfill_flag.id == live.id  # backfill alone also identifies by the value
    assert _live({"b": 1, "a": 2}, 1).id == _live({"a": 2, "b": 1}, 2).id  # a structure's field order is not identity


def test_two_live_values_with_one_server_timestamp_but_different_values_are_distinct() -> None:
    assert _live(1.0, seq=1).id != _live(2.0, seq=2).id
    assert _live(1, seq=1).id != _live(1.0, seq=2).id != _live(True, seq=3).id  # the type is part of the value
    assert _live([1, 2], seq=1).id != _live([2, 1], seq=2).id
    assert _live(1.0, seq=1).id != _live(1.0, seq=1, ts=T + 1).id


def test_without_server_timestamp_identity_the_id_is_over_seq_as_before() -> None:
    a = make_record("plc", "/a/b", 1.0, seq=1, source_ts_ns=T)
    b = make_record("plc", "/a/b", 1.0, seq=2, source_ts_ns=T)
    assert a.id != b.id
    # the previous formula (tests/cases/codec/v1_batch.json holds ids the previous code computed)
    assert make_record("plc", "/a/b", 7.0, seq=1, source_ts_ns=T, flags=Flag.OVERFLOW).id == a.id


# -- status codes --------------------------------------------------------------------------------------------------

def test_status_codes_have_the_specification_names() -> None:
    assert statuscodes.name(BAD_SENSOR) == "BadSensorFailure"
    assert statuscodes.name(0x808A0000) == "BadNotConnected"
    assert statuscodes.name(0x80310000) == "BadNoCommunication"
    assert statuscodes.name(0) == "Good"
    assert statuscodes.name(0x40900000) == "UncertainLastUsableValue"
    assert statuscodes.name(BAD_SENSOR | 0x480) == "BadSensorFailure"  # info bits are not part of the name


def test_unknown_status_codes_show_severity_and_hex() -> None:
    assert statuscodes.name(0x81FF0000) == "Bad (0x81FF0000)"
    assert statuscodes.name(0x47FE0000) == "Uncertain (0x47FE0000)"
    assert statuscodes.name(0x07FE0000) == "Good (0x07FE0000)"
    assert statuscodes.quality(0x81FF0000) == Quality.BAD
    assert statuscodes.quality(0x40900000) == Quality.UNCERTAIN
    assert statuscodes.quality(0x00A20000) == Quality.GOOD


def test_info_bits_overflow_and_limits() -> None:
    assert statuscodes.overflow(0x00000480)
    assert not statuscodes.overflow(0x00000080)  # InfoType is not DataValue: bit 7 means nothing
    assert statuscodes.describe(0x00000480) == "Good [Overflow]"
    assert statuscodes.describe(0x40900600) == "UncertainLastUsableValue [High]"
    assert statuscodes.describe(BAD_SENSOR) == "BadSensorFailure"


def test_the_table_matches_node_opcua() -> None:
    """The table is the specification's; node-opcua (tests/peers) generates its own from the same CSV."""
    js = (ROOT / "tests/peers/node_modules/node-opcua-status-code/dist/_generated_status_codes.js").read_text()
    theirs = {int(v, 0): n for n, v in re.findall(r'name:\s*"(\w+)",\s*value:\s*(0x[0-9A-Fa-f]+|\d+)', js)}
    assert len(theirs) > 200
    ours = {code: statuscodes.name(code) for code in theirs}
    assert ours == theirs


# -- gatewayctl tail -----------------------------------------------------------------------------------------------

def _tail_store(tmp_path: Path) -> list[Record]:
    from gateway.streams import RecordWriter, StreamSpec
    from gateway.streams.embedded import EmbeddedStore

    written = [
        make_record("plc", "Reactor/Pressure", 2705.0, seq=1, source_ts_ns=T),
        make_record("plc", "Reactor/Temp", 80.0, seq=2, source_ts_ns=T, quality=Quality.BAD, status=BAD_SENSOR),
        make_record("plc", "Reactor/Profile", [1.0, 2.0], seq=3, source_ts_ns=T, status=0x00000480,
                    flags=Flag.OVERFLOW | Flag.BACKFILL),
        make_record("plc", "Reactor/Long", list(range(100)), seq=4, source_ts_ns=T),
    ]
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="factoryedge-opcua"))
    RecordWriter(store, "factoryedge-opcua").write(written)
    store.close()
    return written


def test_tail_shows_status_names_flags_and_json_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    _tail_store(tmp_path)
    assert main(["--store", str(tmp_path), "tail", "factoryedge-opcua"]) == 0
    plain, bad, profile, long = capsys.readouterr().out.splitlines()
    assert plain.rstrip().endswith("GOOD      value")  # a Good record: no status, no flags
    assert bad.rstrip().endswith("BAD       value  BadSensorFailure")
    assert "[1.0,2.0]" in profile and profile.rstrip().endswith("value  Good [Overflow]  [backfill,overflow]")
    assert "[0,1,2,3," in long and "…" in long and "99]" not in long  # cut: --json has it whole


def test_tail_json_carries_status_flags_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    written = _tail_store(tmp_path)
    assert main(["--store", str(tmp_path), "--json", "tail", "factoryedge-opcua"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [g["id"] for g in got] == [r.id for r in written]
    assert "status" not in got[0] and "flags" not in got[0]
    assert (got[1]["status"], got[1]["statusName"]) == (BAD_SENSOR, "BadSensorFailure")
    assert got[2]["flags"] == ["backfill", "overflow"] and got[2]["value"] == [1.0, 2.0]
    assert got[3]["value"] == list(range(100))


def test_the_fast_constructor_is_the_dataclass_one() -> None:
    # gateway.record replaces the frozen dataclass's __init__ with a faster one: same parameters, same defaults,
    # and the record still refuses changes
    params = list(inspect.signature(Record.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        (f.name, inspect.Parameter.empty if f.default is MISSING else f.default) for f in fields(Record)]
    r = Record("s", "t", 1.0, Quality.GOOD, T, T, 1, status=BAD_SENSOR, flags=Flag.BACKFILL)
    assert (r.source, r.tag, r.value, r.quality, r.source_ts_ns, r.gateway_ts_ns, r.seq, r.kind, r.status,
            r.flags) == ("s", "t", 1.0, Quality.GOOD, T, T, 1, Kind.VALUE, BAD_SENSOR, Flag.BACKFILL)
    with pytest.raises(FrozenInstanceError):
        r.value = 2.0  # type: ignore[misc]
    assert replace(r, value=None).value is None and r == replace(r) and hash(r) == hash(replace(r))


def test_ids_are_the_documented_blake2b_of_the_identifying_fields() -> None:
    # ids are stored by consumers to drop duplicates: a change of how they are computed would be a change of every id
    rng = random.Random(18)
    for _ in range(500):
        source = "".join(rng.choice("abcé/\x1f ") for _ in range(rng.randint(0, 12)))
        tag = "".join(rng.choice("xyz/Ω-._") for _ in range(rng.randint(0, 40)))
        ts = rng.randint(0, 2**63 - 1)
        keys: list[int | str] = [rng.randint(0, 2**63 - 1), "f:1.5", "s:text"]
        seq = rng.choice(keys)
        key = f"{source}\x1f{tag}\x1f{ts}\x1f{seq}".encode()
        assert record_id(source, tag, ts, seq) == hashlib.blake2b(key, digest_size=12).hexdigest()
