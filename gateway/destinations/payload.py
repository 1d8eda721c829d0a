"""The JSON form of a record that every text destination sends, and the packing of records into messages.

Payloads (:func:`record_json`; :func:`record_item` writes its JSON bytes): a record's ``status`` (number, and
``statusName`` from :mod:`gateway.statuscodes`) appears only when it is not 0, its ``flags`` (names, e.g.
``["backfill"]``) only when any is set, and list/dict values as JSON arrays/objects. A ``Kind.META`` record (a tag's
units, range, description) is routed like any other record (``kinds`` lists ``meta``; the default route has it);
MQTT, IoT Core and Kinesis also remember the latest metadata per (source, tag) they were given (:class:`MetaCache`)
and put it in a ``meta`` header of every message carrying values of that tag:
``{"meta":[{"source":…,"tag":…,"meta":{…}}],"records":[…]}``. The cache lives as long as the destination: after a
publisher restart a tag's header returns with its next META record (collectors send it at every session). SiteWise
has no place for metadata and leaves META records out (:mod:`.sitewise`).
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from gateway.record import Kind, Quality, Record, flag_names
from gateway.statuscodes import name as status_name


def iso_ns(ts_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds (datetime keeps microseconds only)."""
    if ts_ns >= 1_000_000_000:  # its decimal digits are the seconds, then the nanoseconds zero-padded: no arithmetic
        digits = str(ts_ns)
        return f"{_iso_second(digits[:-9])}.{digits[-9:]}Z"
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return f"{_iso_seconds(secs)}.{ns:09d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(secs: str) -> str:
    return _iso_seconds(int(secs))


@functools.lru_cache(maxsize=4096)
def _iso_seconds(secs: int) -> str:
    # Records come in bursts of the same second: formatting each second once halves the cost of a record's JSON.
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


# record_items makes the pieces of a record's JSON that repeat once: the escaped source and tag, the quality and kind,
# and a time shared by neighbouring records (the values of one reading): 3.0 -> 2.1 µs a record of such a batch.
_QUALITY_KIND = {(q, k): f',"quality":"{q.name}","kind":"{k.name.lower()}","sourceTs":"' for q in Quality for k in Kind}


@functools.lru_cache(maxsize=1 << 16)
def _names(source: str, tag: str) -> str:
    # Sources and tags repeat in every batch: each pair is escaped once.
    return f'","source":{_json_name(source)},"tag":{_json_name(tag)},"value":'


@functools.lru_cache(maxsize=1 << 16)
def _json_name(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def record_item(r: Record) -> bytes:
    """``dumps(record_json(r))`` byte for byte: the JSON item of one record (:func:`record_items` of one)."""
    return record_items([r])[0]


def record_items(records: list[Record]) -> list[bytes]:
    """``dumps(record_json(r))`` of each record, byte for byte, built from string pieces: the dict and
    ``json.dumps`` per record were more than half of the publisher's CPU (issue 18). Finite floats and ints are
    written by their ``repr``, as ``json.dumps`` does; other values go through ``json.dumps``
    (tests/destinations/test_record_item.py compares the two over every kind of field and value)."""
    out: list[bytes] = []
    last_src: int | None = None
    last_gw: int | None = None
    src_text = gw_text = ""
    src_second, src_head = "", ""  # the decimal seconds of the last source time, and their RFC 3339 text
    for r in records:
        value = r.value
        kind = type(value)
        if (kind is float and math.isfinite(value)) or kind is int:  # type: ignore[arg-type]
            text = repr(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        # The values of one reading (a Modbus answer, an OPC UA notification) share their times: formatted once.
        if r.source_ts_ns != last_src:
            last_src = r.source_ts_ns
            # Server timestamps differ per value but mostly share their second: iso_ns's steps, with the second's
            # text kept here (0.39 -> 0.29 µs a record of such a batch, issue 18).
            if last_src < 1_000_000_000:
                src_text = iso_ns(last_src)
            else:
                digits = str(last_src)
                if digits[:-9] != src_second:
                    src_second = digits[:-9]
                    src_head = _iso_second(src_second)
                src_text = f"{src_head}.{digits[-9:]}Z"
        if r.gateway_ts_ns != last_gw:
            last_gw = r.gateway_ts_ns
            gw_text = iso_ns(last_gw)
        item = f'{{"id":"{r.id}{_names(r.source, r.tag)}{text}{_QUALITY_KIND[r.quality, r.kind]}{src_text}' \
            f'","gatewayTs":"{gw_text}","seq":{r.seq}'
        if r.status:
            item += f',"status":{r.status},"statusName":{_json_name(status_name(r.status))}'
        if r.flags:
            item += ',"flags":' + json.dumps(flag_names(r.flags), separators=(",", ":"), ensure_ascii=False)
        out.append((item + "}").encode())
    return out


def record_json(r: Record) -> dict[str, Any]:
    """The JSON form of a record. ``id`` lets consumers drop duplicates after a replay.

    ``status``/``statusName`` only when the status is not 0 and ``flags`` only when any is set, so that the common
    record costs nothing more.
    """
    out: dict[str, Any] = {
        "id": r.id,
        "source": r.source,
        "tag": r.tag,
        "value": r.value,
        "quality": r.quality.name,
        "kind": r.kind.name.lower(),
        "sourceTs": iso_ns(r.source_ts_ns),
        "gatewayTs": iso_ns(r.gateway_ts_ns),
        "seq": r.seq,
    }
    if r.status:
        out["status"] = r.status
        out["statusName"] = status_name(r.status)
    if r.flags:
        out["flags"] = flag_names(r.flags)
    return out


class MetaCache:
    """The latest metadata (``Kind.META`` value) of each (source, tag) one destination was given, and the ``meta``
    header entries of a message's records.

    Bounded like SiteWise's alias cache: past ``limit`` tags, new tags get no header (their META records still go
    out as records).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._meta: dict[tuple[str, str], bytes] = {}
        self._limit = limit

    def __len__(self) -> int:
        """How many tags have metadata (a packer skips the look-ups while none has)."""
        return len(self._meta)

    def observe(self, records: Iterable[Record]) -> None:
        """Remember the META records among ``records`` (in order: the last one of a tag wins)."""
        meta = Kind.META
        for r in records:
            if r.kind == meta:
                key = (r.source, r.tag)
                if key in self._meta or len(self._meta) < self._limit:
                    self._meta[key] = dumps({"source": r.source, "tag": r.tag, "meta": r.value})

    def entry(self, r: Record) -> tuple[tuple[str, str], bytes] | None:
        """The header entry (key, JSON) for a record's tag, or None: none known, or the record is META itself."""
        if not self._meta or r.kind == Kind.META:
            return None
        key = (r.source, r.tag)
        found = self._meta.get(key)
        return None if found is None else (key, found)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def topic_fields(r: Record, extra: dict[str, str]) -> dict[str, str]:
    """Fields a topic template may use: ``topic_vars`` (site, line...) and the record's source, kind, tag, group.

    ``group`` is the tag's parent path (``Reactor`` for ``Reactor/Pressure``, ``anomaly/plant`` for an anomaly
    score), so one topic per equipment or anomaly group needs no per-tag configuration.
    """
    tag = r.tag.strip("/")
    return {**extra, "source": r.source, "kind": r.kind.name.lower(), "tag": tag, "group": tag.rpartition("/")[0]}


RECORD_FIELDS = ("source", "kind", "tag", "group")


def template_problem(template: str, fields: Iterable[str]) -> str | None:
    """Why ``template`` cannot be filled for every record (a field no record has, a bad format), or None.

    Checked at validation: at run time such a template refuses every record (dead-lettered), which no one means.
    """
    known = sorted(set(fields))
    allowed = " ".join(f"{{{f}}}" for f in known)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"topic template {template!r} is malformed ({exc}): write fields as {{name}} and braces as {{{{ }}}}"
    for _literal, field_name, _spec, _conversion in parts:
        if field_name is None:
            continue
        name = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if name not in known:
            what = f"{{{name}}}" if name else "an unnamed field {}"
            return f"topic template {template!r} names {what}, which no record has: use only {allowed} " \
                "(add other names to topic_vars)"
    try:
        template.format(**{f: "x" for f in known})
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        return f"topic template {template!r} cannot be filled ({exc}): use plain fields {allowed}"
    return None


ENVELOPE_OVERHEAD = b'{"records":[]}'
META_OVERHEAD = len(b'"meta":[],')


def pack_with_meta(pairs: list[tuple[bytes, Record]], limit: int, cache: MetaCache | None,
                   max_records: int | None = None) -> list[tuple[bytes, list[Record]]]:
    """Pack (JSON item, record) pairs in order into envelopes of at most ``limit`` bytes (and ``max_records``),
    each with the ``meta`` header of its records' tags. A header entry that would not fit even beside its record
    alone is left out of that message (the record is never refused for its metadata)."""
    out: list[tuple[bytes, list[Record]]] = []
    # The message being packed, in local variables: a Chunk object with methods cost ~0.3 µs a record (issue 18).
    items: list[bytes] = []
    records: list[Record] = []
    header: dict[tuple[str, str], bytes] = {}  # the meta entries of its records' tags
    size = len(ENVELOPE_OVERHEAD)
    most = sys.maxsize if max_records is None else max_records
    lookup = cache.entry if cache else None
    for item, r in pairs:
        meta = lookup(r) if lookup is not None else None
        cost = len(item) + 1
        extra = 0  # what its header entry adds, when this message has none for its tag yet
        if meta is not None and meta[0] not in header:
            extra = len(meta[1]) + 1 + (0 if header else META_OVERHEAD)
        if items and (len(items) >= most or size + cost + extra > limit):
            out.append((envelope(items, list(header.values())), records))
            items, records, header = [], [], {}
            size = len(ENVELOPE_OVERHEAD)
            extra = 0 if meta is None else len(meta[1]) + 1 + META_OVERHEAD
        if extra and size + cost + extra > limit:
            extra = 0  # the record alone fits, not with its header entry
        elif extra and meta is not None:
            header[meta[0]] = meta[1]
        size += cost + extra
        items.append(item)
        records.append(r)
    if items:
        out.append((envelope(items, list(header.values())), records))
    return out


def _topic(r: Record, template: str, extra: dict[str, str], check_topic: Any) -> tuple[str, str | None]:
    """The topic of ``r``'s messages, and why it cannot be used (None when it can)."""
    try:
        topic = template.format(**topic_fields(r, extra))
    except (KeyError, IndexError, ValueError) as exc:
        return "", (f"topic template {template!r} cannot be filled: {exc!r}; use only {{source}} {{kind}} {{tag}} "
                    "{group} and keys of topic_vars")
    return topic, check_topic(topic) if check_topic else None


def envelope(chunk: list[bytes], meta: list[bytes] | None = None) -> bytes:
    """The message body every batching destination sends: ``{"records":[record_json, ...]}``, with a ``meta``
    header first when ``meta`` has entries (see :class:`MetaCache`)."""
    head = b'{"meta":[' + b",".join(meta) + b"]," if meta else b"{"
    return head + b'"records":[' + b",".join(chunk) + b"]}"


def pack_by_topic(
    records: list[Record], template: str, extra: dict[str, str], limit: int, check_topic: Any = None,
    meta: MetaCache | None = None,
) -> tuple[list[tuple[str, bytes, list[Record]]], list[tuple[Record, str]]]:
    """Group records by their topic and pack them into messages of at most ``limit`` bytes, order kept per topic.

    Returns (messages as (topic, payload, records), refused records with the reason): a record larger than a
    message, or one whose topic ``check_topic`` (returns a problem or None) refuses. With ``meta``, the META
    records among ``records`` update it first and each message gets the header of its tags.
    """
    if meta is not None:
        meta.observe(records)
    by_topic: dict[str, list[tuple[bytes, Record]]] = {}
    refused: list[tuple[Record, str]] = []
    room = limit - len(ENVELOPE_OVERHEAD)
    # A batch holds many records of each tag: its topic is filled and checked once per batch, not per record.
    topics: dict[tuple[str, Kind, str], tuple[str, str | None]] = {}
    for r, item in zip(records, record_items(records), strict=True):
        if len(item) > room:
            refused.append((r, f"record of {len(item)} bytes does not fit a message of {limit} bytes "
                               "(max_message_bytes): shorten the value or raise max_message_bytes"))
            continue
        key = (r.source, r.kind, r.tag)
        found = topics.get(key)
        if found is None:
            found = topics[key] = _topic(r, template, extra, check_topic)
        topic, problem = found
        if problem:
            refused.append((r, problem))
            continue
        by_topic.setdefault(topic, []).append((item, r))
    out = []
    for topic, pairs in by_topic.items():
        out += [(topic, payload, recs) for payload, recs in pack_with_meta(pairs, limit, meta)]
    return out, refused
