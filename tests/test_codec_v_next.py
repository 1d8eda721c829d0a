"""Codec version 2 (issue #16): status, flags and JSON values through the codec and the embedded store; batches of
version 1 (tests/cases/codec/v1_batch.bin, written by the previous encoder) still read, and still written when a
batch needs nothing new."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest

from devkit.peers import ROOT
from gateway.codec import decode_batch, encode_batch
from gateway.errors import CodecError
from gateway.record import MAX_VALUE_DEPTH, Flag, Kind, Quality, Record, make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

CASES = ROOT / "tests" / "cases" / "codec"
T = 1_764_633_600_000_000_000
BAD_SENSOR = 0x808C0000


def new_records() -> list[Record]:
    """One record per new thing: a status, each flag, arrays, structures, a META record, plus plain ones."""
    return [
        make_record("plc", "/l/pressure", 2705.5, seq=1, source_ts_ns=T, quality=Quality.BAD, status=BAD_SENSOR),
        make_record("plc", "/l/level", 74.9, seq=2, source_ts_ns=T, flags=Flag.BACKFILL | Flag.SERVER_TS),
        make_record("plc", "/l/flow", 1.25, seq=3, source_ts_ns=T, status=0x00000480, flags=Flag.OVERFLOW),
        make_record("plc", "/l/profile", [1.0, 2.5, -3, True, None, "é"], seq=4, source_ts_ns=T),
        make_record("plc", "/l/recipe", {"name": "A", "steps": [{"t": 10, "sp": 80.5}], "on": False}, seq=5,
                    source_ts_ns=T, status=0x40900000, quality=Quality.UNCERTAIN),
        make_record("plc", "/l/pressure", {"unit": "kPa", "unit_id": 4933699, "eu_range": [0.0, 3000.0]}, seq=6,
                    source_ts_ns=T, kind=Kind.META),
        make_record("plc", "/l/empty", [], seq=7, source_ts_ns=T, flags=0xFFFF_FFFF),
        make_record("plc", "/l/count", 2**64 - 1, seq=8, source_ts_ns=T),
    ]


def test_every_new_field_round_trips_through_the_codec() -> None:
    records = new_records()
    payload = encode_batch(records)
    assert payload[2] == 2
    assert decode_batch(payload) == records
    assert [r.id for r in decode_batch(payload)] == [r.id for r in records]


def test_a_version_1_batch_of_the_previous_encoder_still_decodes() -> None:
    expected = json.loads((CASES / "v1_batch.json").read_text())
    got = decode_batch((CASES / "v1_batch.bin").read_bytes())
    assert [_as_fixture(r) for r in got] == expected  # ids included: they did not change
    assert all(r.status == 0 and r.flags == 0 for r in got)


def test_a_batch_that_needs_nothing_new_is_written_as_the_previous_version_wrote_it() -> None:
    """Byte for byte what the previous encoder wrote: a component not yet upgraded reads it."""
    expected = json.loads((CASES / "v1_batch.json").read_text())
    records = [Record(e["source"], e["tag"], e["value"], Quality[e["quality"]], e["source_ts_ns"], e["gateway_ts_ns"],
                      e["seq"], Kind[e["kind"]]) for e in expected]
    assert encode_batch(records) == (CASES / "v1_batch.bin").read_bytes()


@pytest.mark.parametrize("record", new_records()[:7], ids=lambda r: r.tag)
def test_any_new_thing_makes_the_batch_version_2(record: Record) -> None:
    plain = make_record("plc", "/l/x", 1.0, seq=9, source_ts_ns=T)
    assert encode_batch([plain, record])[2] == 2
    assert encode_batch([plain])[2] == 1


def test_the_embedded_store_keeps_every_new_field(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "data")
    store.create_stream(StreamSpec(name="s"))
    records = new_records()
    RecordWriter(store, "s").write(records)
    reader = RecordReader(store, "s", "r", PositionStore(tmp_path / "positions"))
    batch = reader.poll(max_messages=10, timeout_s=0)
    assert batch.records == records and not batch.poison
    store.close()


NAMES = ["plc", "/l/x"]


def _v2(*rows: list[Any], version: int = 2) -> bytes:
    return b"FE" + bytes([version]) + cbor2.dumps([NAMES, list(rows)])


def _row(**change: Any) -> list[Any]:
    fields = {"si": 0, "ti": 1, "value": 1.5, "q": 0, "sts": T, "gts": T, "seq": 7, "kind": 0, "status": 0,
              "flags": 0, **change}
    return list(fields.values())


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


POISON = {
    "status_negative": _v2(_row(status=-1)),
    "status_over_32_bits": _v2(_row(status=2**32)),
    "flags_not_an_integer": _v2(_row(flags=1.0)),
    "short_row": _v2(_row()[:8]),
    "v1_row_in_v2": _v2(_row()[:8], _row()),
    "v2_row_in_v1": _v2(_row(), version=1),
    "nan_in_array": _v2(_row(value=[1.0, float("nan")])),
    "map_with_integer_key": _v2(_row(value={1: "a"})),
    "bytes_in_array": _v2(_row(value=[b"\x00"])),
    "datetime_in_map": b"FE\x02" + cbor2.dumps([NAMES, [_row(value={"t": cbor2.CBORTag(0, "2026-01-01T00:00:00Z")})]]),
    "too_deep": _v2(_row(value=_nested(MAX_VALUE_DEPTH + 2))),
    "kind_out_of_range": _v2(_row(kind=5)),
    "meta_in_v1": _v2(_row(kind=4)[:8], version=1),
    "array_in_v1": _v2(_row(value=[1])[:8], version=1),
    "future_version": _v2(_row(), version=3),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_version_2_batch_is_a_codec_error(name: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(POISON[name])
    assert "Fix:" in str(err.value)


def test_the_writer_of_an_unsupported_version_is_named() -> None:
    with pytest.raises(CodecError, match=r"version 3 is not supported \(this gateway reads versions 1, 2\)"):
        decode_batch(POISON["future_version"])


def _as_fixture(r: Record) -> dict[str, Any]:
    return {"source": r.source, "tag": r.tag, "value": r.value, "quality": r.quality.name,
            "source_ts_ns": r.source_ts_ns, "gateway_ts_ns": r.gateway_ts_ns, "seq": r.seq, "kind": r.kind.name,
            "id": r.id}
