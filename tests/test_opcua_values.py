"""OPC UA values of every kind reach the stream (issue #16 item 2): arrays and matrices as JSON lists or one tag per
element, LocalizedText, ByteString, Guid, QualifiedName, NodeId, DateTime, StatusCode, Variants of Variants, and
structures decoded with the server's own data type definitions; what cannot be carried is BAD with a reason, logged
once per tag and shown as the connection's last error.

Against two independent servers: node-opcua (tests/peers/opcua_server.js --values, its structures from a nodeset) and
asyncua (tests/peers/opcua_values_server.py, structures made with new_struct), in their own processes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError

from gateway.record import MAX_VALUE_DEPTH, Quality, Record
from gateway.sources.common import Counters
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_values import ValueConverter, to_value
from tests.support.opcua_peer import (
    VALUES_URI,
    collect,
    conn,
    counters,
    records,
    running,
    start_asyncua_values,
    start_node_opcua,
    until,
)

BATCH = {"Id": "B-7", "Quantity": 12.5, "Steps": [1, 2, 3], "Done": True, "Target": {"Name": "T", "Value": 80.0}}


def node_opcua_expected(ns: int) -> dict[str, Any]:
    """What each node of the node-opcua peer's Values folder must arrive as (``ns``: the peer's namespace index)."""
    return {
        "Values/DoubleArray": [1.5, 2.5, -3.25],
        "Values/Int32Matrix": [[1, 2, 3], [4, 5, 6]],
        "Values/StringArray": ["a", "b", "\u00fc"],
        "Values/ByteArray": [0, 1, 255],
        "Values/Text": "Gr\u00fc\u00dfe",
        "Values/Bytes": base64.b64encode(bytes([0, 1, 2, 254, 255])).decode(),
        "Values/Guid": "72962b91-fa75-4ae6-8d28-b404dc7daf63",
        "Values/Name": f"{ns}:Q",
        "Values/Node": f"ns={ns};s=Reactor/Pressure",
        "Values/Time": "2026-01-02T03:04:05.006000+00:00",
        "Values/Status": "BadSensorFailure",
        "Values/Mixed": [1.5, "x", True, 7],
        "Values/Batch": BATCH,
        "Values/Batches": [{**BATCH, "Id": "B-8", "Quantity": 1.0}, {**BATCH, "Id": "B-9", "Quantity": 2.0}],
    }


READING = {"Name": "R1", "Value": 42.5, "Samples": [1.0, 2.0], "Ok": True, "Mode": 1,
           "Limits": {"Low": 0.0, "High": 100.0}}
ASYNCUA_EXPECTED: dict[str, Any] = {
    "Values/Reading": READING,
    "Values/Readings": [{**READING, "Name": "R2", "Value": 1.0}, {**READING, "Name": "R3", "Value": 2.0}],
    "Values/DoubleArray": [1.5, 2.5, -3.25],
    "Values/Int32Matrix": [[1, 2, 3], [4, 5, 6]],
    "Values/Text": "Gr\u00fc\u00dfe",
    "Values/Bytes": base64.b64encode(b"\x00\x01\x02\xfe\xff").decode(),
    "Values/Guid": "72962b91-fa75-4ae6-8d28-b404dc7daf63",
    "Values/Mixed": [1.5, "x", True],
}


def nid(ident: int | str, ns: int = 0) -> ua.NodeId:
    """A node id from plain values (asyncua types its constructor with its own int and str subclasses)."""
    return ua.NodeId(ua.Int32(ident) if isinstance(ident, int) else ua.String(ident), ua.Int16(ns))


def last(recs: list[Record]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for r in recs:
        out[r.tag] = r
    return out


class Lines(logging.Handler):
    """WARNING lines of the gateway's loggers while a test runs (caplog misses loggers that do not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Lines]:
    handler = Lines()
    logging.getLogger("gateway").addHandler(handler)
    yield handler
    logging.getLogger("gateway").removeHandler(handler)


# --- against the peers ------------------------------------------------------------------------------------------


def test_every_kind_of_value_from_node_opcua_arrives_good_as_json(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=1, values=True)
    expected = node_opcua_expected(server.ns)
    try:
        cfg = conn(server, nodes=[f"s={tag}" for tag in expected])
        asyncio.run(collect(tmp_path, [cfg], lambda c: "peer" in c.connections
                            and counters(c).values_written >= len(expected)))
    finally:
        server.stop()
    got = last(records(tmp_path))
    for tag, value in expected.items():
        assert tag in got, (tag, sorted(got))
        assert (got[tag].quality, got[tag].value) == (Quality.GOOD, value), (tag, got[tag])


def test_every_kind_of_value_from_asyncua_arrives_good_and_an_opaque_structure_is_bad(tmp_path: Path,
                                                                                      warnings: Lines) -> None:
    server = start_asyncua_values(tmp_path / "peer")
    tags = [*ASYNCUA_EXPECTED, "Values/Opaque"]
    try:
        cfg = OpcUaConnection(name="peer", endpoint=server.url, namespace_uri=VALUES_URI,
                              nodes=[f"s={tag}" for tag in tags], publishing_interval_ms=100, timeout_s=5)
        collector = asyncio.run(collect(tmp_path, [cfg], lambda c: "peer" in c.connections
                                        and counters(c).values_written >= len(tags)))
    finally:
        server.stop()
    got = last(records(tmp_path))
    for tag, value in ASYNCUA_EXPECTED.items():
        assert tag in got, (tag, sorted(got))
        assert (got[tag].quality, got[tag].value) == (Quality.GOOD, value), (tag, got[tag])
    assert (got["Values/Opaque"].quality, got["Values/Opaque"].value) == (Quality.BAD, None)
    why = f"a structure with encoding ns={server.ns};i=9999 cannot be decoded"
    assert why in counters(collector).last_error, counters(collector).last_error
    assert sum(why in line for line in warnings.lines) == 1, warnings.lines


def test_elements_mode_makes_one_tag_per_element_named_by_its_index(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=1, values=True)
    nodes = ["Values/DoubleArray", "Values/Int32Matrix", "Values/Batches", "Values/StringArray", "Values/Text"]
    element_tags = {"Values/DoubleArray[0]": 1.5, "Values/DoubleArray[1]": 2.5, "Values/DoubleArray[2]": -3.25,
                    **{f"Values/Int32Matrix[{i}][{j}]": 3 * i + j + 1 for i in range(2) for j in range(3)},
                    "Values/Batches[0]": {**BATCH, "Id": "B-8", "Quantity": 1.0},
                    "Values/Batches[1]": {**BATCH, "Id": "B-9", "Quantity": 2.0},
                    "Values/StringArray": ["a", "b", "\u00fc"],  # json for this tag alone (arrays_by_tag)
                    "Values/Text": "Gr\u00fc\u00dfe"}  # not an array: one tag whatever the mode
    try:
        cfg = conn(server, nodes=[f"s={n}" for n in nodes], arrays="elements",
                   arrays_by_tag={"Values/StringArray": "json"})
        asyncio.run(collect(tmp_path, [cfg], lambda c: "peer" in c.connections
                            and counters(c).values_written >= len(element_tags)))
    finally:
        server.stop()
    got = last(records(tmp_path))
    assert set(got) == set(element_tags), sorted(got)
    for tag, value in element_tags.items():
        assert (got[tag].quality, got[tag].value) == (Quality.GOOD, value), (tag, got[tag])


def test_a_lost_link_marks_every_element_tag_bad_with_its_last_value(tmp_path: Path) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=1, values=True)
    cfg = conn(server, nodes=["s=Values/DoubleArray"], arrays="elements")

    async def body() -> None:
        async with running(tmp_path, [cfg]) as (collector, task):
            await until(collector, task, lambda c: counters(c).values_written >= 3)
            server.stop()
            await until(collector, task, lambda c: counters(c).bad_values_read >= 3)

    try:
        asyncio.run(body())
    finally:
        server.stop()
    bad = {r.tag: r.value for r in records(tmp_path) if r.quality == Quality.BAD}
    assert bad == {"Values/DoubleArray[0]": 1.5, "Values/DoubleArray[1]": 2.5, "Values/DoubleArray[2]": -3.25}, bad


def test_an_undecodable_structure_is_bad_for_that_tag_alone_logged_once_with_its_reason_in_status(
        tmp_path: Path, warnings: Lines) -> None:
    server = start_node_opcua(tmp_path / "peer", variables=1, values=True)
    try:  # polling: the same undecodable value read again and again, logged once
        cfg = conn(server, nodes=["s=Values/Opaque", "s=Reactor/Pressure"], mode="polling", scan_interval_s=0.05)
        collector = asyncio.run(collect(tmp_path, [cfg], lambda c: "peer" in c.connections
                                        and counters(c).extra.get("undecodable_values_read", 0) >= 3))
    finally:
        server.stop()
    recs = records(tmp_path)
    opaque = [r for r in recs if r.tag == "Values/Opaque"]  # read at every scan, written once (the deadband)
    assert opaque and all((r.quality, r.value) == (Quality.BAD, None) for r in opaque), opaque[:3]
    assert any(r.quality == Quality.GOOD for r in recs if r.tag == "Reactor/Pressure"), recs[:5]
    why = "a structure with encoding ns="
    assert sum(why in line and "Values/Opaque" in line for line in warnings.lines) == 1, warnings.lines
    status = json.loads(next((tmp_path / "status").glob("*.json")).read_text())
    assert "tag Values/Opaque: " + why in json.dumps(status), status
    assert counters(collector).extra["undecodable_values_read"] >= 3, counters(collector)


# --- the conversion, value by value ---------------------------------------------------------------------------


class Mode(enum.IntEnum):
    AUTO = 0
    MANUAL = 1


@dataclass
class Inner:
    Low: float = 0.0
    High: float = 1.0


@dataclass
class Outer:
    Name: str = "n"
    Mode: Mode = Mode.MANUAL
    Inner: Inner = field(default_factory=Inner)
    Encoding: int = field(default=0, repr=False)  # asyncua's bookkeeping field: not part of the value


@pytest.mark.parametrize(("raw", "want"), [
    (ua.Variant(ua.LocalizedText("hi", "en")), "hi"),
    (ua.LocalizedText(None, "en"), ""),
    (ua.Variant(b"\x00\xff", ua.VariantType.ByteString), "AP8="),
    (uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"), "72962b91-fa75-4ae6-8d28-b404dc7daf63"),
    (ua.QualifiedName("Q", 3), "3:Q"),
    (ua.QualifiedName("Q", 0), "Q"),
    (nid("Tag", 2), "ns=2;s=Tag"),
    (ua.ExpandedNodeId(ua.Int32(5), ua.Int16(0), NamespaceUri=ua.String("urn:x"), ServerIndex=ua.Int32(1)),
     "svr=1;nsu=urn:x;i=5"),
    (ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure)), "BadSensorFailure"),
    (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2026-01-02T01:04:05+00:00"),
    (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05+00:00"),
    (ua.Variant([ua.Variant(1.5), ua.Variant("x"), ua.Variant([ua.Variant(2)])], ua.VariantType.Variant),
     [1.5, "x", [2]]),
    (ua.Variant([[1, 2], [3, 4]], ua.VariantType.Int32), [[1, 2], [3, 4]]),
    (Outer(), {"Name": "n", "Mode": 1, "Inner": {"Low": 0.0, "High": 1.0}}),
    (ua.Range(Low=0.0, High=100.0), {"Low": 0.0, "High": 100.0}),
    (ua.DataValue(ua.Variant(1.5), SourceTimestamp=ua.DateTime(2026, 1, 1, tzinfo=dt.timezone.utc)),
     {"value": 1.5, "status": "Good", "source_time": "2026-01-01T00:00:00+00:00"}),
    (ua.ExtensionObject(), None),
    (ua.Variant(None), None),
])
def test_each_kind_converts_to_its_json_value(raw: Any, want: Any) -> None:
    value, reason = to_value(raw)
    assert (value, reason) == (want, None)
    assert type(value) in (str, list, dict, type(None))  # plain JSON types, never an enum or a str subclass


@pytest.mark.parametrize(("raw", "reason"), [
    (ua.ExtensionObject(TypeId=nid(9999, 2), Body=ua.ByteString(b"\x01")), "a structure with encoding ns=2;i=9999"),
    ([1.0, float("nan")], "an element is NaN or infinite"),
    ({1, 2}, "a value of type set is not carried"),
])
def test_what_cannot_be_carried_has_a_reason_and_no_value(raw: Any, reason: str) -> None:
    value, why = to_value(raw)
    assert value is None and why is not None and reason in why, (value, why)


def test_nesting_deeper_than_a_record_carries_is_refused() -> None:
    deep: list[Any] = [1]
    for _ in range(MAX_VALUE_DEPTH + 2):
        deep = [deep]
    assert to_value(deep)[1] == f"the value nests deeper than {MAX_VALUE_DEPTH} levels"


class NoDefinitions:
    """A client of a server that exposes no DataTypeDefinition attributes (OPC UA before 1.04), whose nodes have
    the data types given."""

    def __init__(self, *types: ua.NodeId) -> None:
        self.types = types
        self.loads = 0

    async def read_attributes(self, nodes: list[Any], attr: ua.AttributeIds) -> list[ua.DataValue]:
        assert attr == ua.AttributeIds.DataType and len(nodes) == len(self.types)
        return [ua.DataValue(ua.Variant(t)) for t in self.types]

    async def load_data_type_definitions(self) -> dict[str, type]:
        self.loads += 1
        raise UaStatusCodeError(ua.StatusCodes.BadAttributeIdInvalid)  # type: ignore[no-untyped-call]


class SlowDefinitions(NoDefinitions):
    async def load_data_type_definitions(self) -> dict[str, type]:
        self.loads += 1
        await asyncio.sleep(60)
        return {}


@pytest.mark.parametrize(("client", "why"), [
    (NoDefinitions(nid(7, 2)), "the server's data type definitions could not be loaded (BadAttributeIdInvalid"),
    (SlowDefinitions(nid(22)), "loading the server's data type definitions took over timeout_s (0.2 s)"),
    (NoDefinitions(nid(11)), "were not loaded: no node's data type needed them"),  # Double: not worth 1 s
])
def test_a_server_without_definitions_makes_its_structures_bad_saying_why(client: Any, why: str,
                                                                          warnings: Lines) -> None:
    cfg = OpcUaConnection(name="c", endpoint="opc.tcp://127.0.0.1:4840", nodes=["ns=2;s=S"], timeout_s=0.2)
    conv, counts = ValueConverter(cfg), Counters()
    asyncio.run(conv.load_definitions(client, [nid("S", 2)]))  # type: ignore[list-item]
    assert client.loads == (0 if client.types == (nid(11),) else 1)
    eo = ua.Variant(ua.ExtensionObject(TypeId=nid(7, 2), Body=ua.ByteString(b"\x01")))
    for _ in range(3):
        conv.convert("S", eo, counts)
    (tag, value, reason), = conv.convert("S", eo, counts)
    assert (tag, value) == ("S", None) and reason is not None and why in reason, reason
    assert counts.last_error == f"tag S: {reason}"
    assert counts.extra["undecodable_values_read"] == 4
    assert sum("tag S is BAD" in line for line in warnings.lines) == 1, warnings.lines


def test_an_array_that_shrinks_in_elements_mode_leaves_its_gone_elements_bad_and_a_lost_link_covers_elements() -> None:
    cfg = OpcUaConnection(name="c", endpoint="opc.tcp://127.0.0.1:4840", nodes=["ns=2;s=A", "ns=2;s=B"],
                          arrays="elements")
    conv, counts = ValueConverter(cfg), Counters()
    assert conv.convert("A", ua.Variant([1.0, 2.0, 3.0]), counts) == [("A[0]", 1.0, None), ("A[1]", 2.0, None),
                                                                      ("A[2]", 3.0, None)]
    assert conv.convert("A", ua.Variant([4.0]), counts) == [("A[0]", 4.0, None), ("A[1]", None, None),
                                                            ("A[2]", None, None)]
    assert conv.expand(["A", "B"]) == ["A[0]", "B"]


def test_the_array_settings_are_validated() -> None:
    base = {"name": "c", "endpoint": "opc.tcp://h:4840", "nodes": ["ns=2;s=A"]}
    with pytest.raises(ValueError, match="arrays"):
        OpcUaConnection.model_validate({**base, "arrays": "rows"})
    with pytest.raises(ValueError, match="arrays_by_tag"):
        OpcUaConnection.model_validate({**base, "arrays_by_tag": {"A": "rows"}})
