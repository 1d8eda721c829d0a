"""Writes the poison corpus: stream messages that pass the store's CRC but are not valid record batches.

Run from the project root (`.venv/bin/python tests/cases/poison/make.py`); the .bin files are committed so that a
change of cbor2 cannot quietly change what the tests feed. Each name says what is wrong.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from pathlib import Path

import cbor2

HEADER = b"FE\x01"
NAMES = ["plc", "Reactor/Pressure"]
NOW = 1_764_633_600_000_000_000


def row(**change: object) -> list[object]:
    fields = {"si": 0, "ti": 1, "value": 1.5, "q": 0, "sts": NOW, "gts": NOW, "seq": 7, "kind": 0, **change}
    return list(fields.values())


def batch(*rows: list[object], names: list[object] | None = None) -> bytes:
    return HEADER + cbor2.dumps([names if names is not None else NAMES, list(rows)])


CORPUS = {
    "infinite_timestamp": batch(row(sts=float("inf"))),
    "nan_timestamp": batch(row(gts=float("nan"))),
    "float_timestamp": batch(row(sts=1.5e18)),
    "negative_timestamp": batch(row(sts=-1)),
    "bignum_sequence": batch(row(seq=2**70)),
    "bool_sequence": batch(row(seq=True)),
    "regex_value": batch(row(value=re.compile("a+"))),
    "datetime_value": batch(row(value=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))),
    "decimal_value": batch(row(value=Decimal("1.5"))),
    "uuid_value": batch(row(value=uuid.UUID(int=1))),
    "set_value": batch(row(value={1, 2})),
    "bytes_value": batch(row(value=b"\x00\x01")),
    "map_value": batch(row(value={"a": 1})),
    "list_value": batch(row(value=[1, 2])),
    "nan_value": batch(row(value=float("nan"))),
    "infinite_value": batch(row(value=float("-inf"))),
    "huge_int_value": batch(row(value=2**64)),
    "undefined_value": batch(row(value=cbor2.undefined)),
    "negative_name_index": batch(row(si=-1)),
    "name_index_out_of_range": batch(row(ti=5)),
    "name_not_text": batch(row(), names=["plc", b"Reactor/Pressure"]),
    "quality_out_of_range": batch(row(q=9)),
    "kind_out_of_range": batch(row(kind=-1)),
    "short_row": batch(row()[:6]),
    "row_not_a_list": batch({"si": 0}),  # type: ignore[arg-type]
    "doc_is_a_map": HEADER + cbor2.dumps({"strings": NAMES, "rows": []}),
    "deep_nesting": HEADER + b"\x82\x80" + b"\x81" * 100_000 + b"\x00",
    "huge_array_header": HEADER + b"\x82\x80\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
    "truncated_cbor": batch(row(), row())[:-5],
    "bad_magic": b"XX\x01" + cbor2.dumps([NAMES, [row()]]),
    "future_version": b"FE\x09" + cbor2.dumps([NAMES, [row()]]),
    "empty": b"",
    "one_good_row_then_poison": batch(row(), row(seq=8, value=re.compile("x"))),
}

if __name__ == "__main__":
    here = Path(__file__).parent
    for name, data in CORPUS.items():
        (here / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(CORPUS)} poison messages to {here}")
