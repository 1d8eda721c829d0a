"""The OPC DA gateway's address space over the simulation: item ids, values, browsing and item properties.

Item ids are tag paths with dots (``Reactor.Pressure``, ``Simulator.SimulatedTime``, ``Disturbances.IDV06``) on a
two-level tree: branches are plant units, leaves item ids. Values come as the OpenOPC gateway returns them:
``(value, quality, timestamp text)``, quality ``Bad`` for process values once the plant shut down. The timestamp
text is ``str()`` of a modern pywin32 time (``2024-05-01 10:00:00.123000+00:00``) or the old pywin32 text
(``05/01/24 10:00:00``, UTC), selectable since real gateways differ. No Pyro here: :mod:`simulator.opcda_server`
serves this over the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from simulator.plant import IDV_NUMBERS
from simulator.runtime import Snapshot
from simulator.tags import IDV_PATHS, PROCESS_TAGS, STATUS_TAGS

TimeFormat = Literal["modern", "legacy"]

PROCESS_INDEX = {t.path.replace("/", "."): i for i, t in enumerate(PROCESS_TAGS)}
STATUS_IDS = {path.replace("/", "."): kind for path, kind, _d in STATUS_TAGS}
IDV_IDS = {path.replace("/", "."): n for n, path in zip(IDV_NUMBERS, IDV_PATHS, strict=True)}
ITEM_IDS: tuple[str, ...] = (*PROCESS_INDEX, *STATUS_IDS, *IDV_IDS)
ALL_ITEMS = frozenset(ITEM_IDS)
_BRANCHES: dict[str, list[str]] = {}
for _item in ITEM_IDS:
    _BRANCHES.setdefault(_item.split(".", 1)[0], []).append(_item)


def format_stamp(stamp: datetime, time_format: TimeFormat = "modern") -> str:
    """A timestamp as the gateway sends it: ``str()`` of a modern pywin32 time, or the old pywin32 text (UTC)."""
    if time_format == "legacy":
        return stamp.astimezone(timezone.utc).strftime("%m/%d/%y %H:%M:%S")
    return str(stamp)


def item_value(snap: Snapshot, item: str, time_format: TimeFormat = "modern") -> tuple[Any, str, str] | None:
    """``(value, quality, timestamp)`` of ``item`` in ``snap`` as the gateway returns it, None if unknown."""
    now = format_stamp(datetime.now(timezone.utc), time_format)
    if item in PROCESS_INDEX:
        i = PROCESS_INDEX[item]
        return snap.values[i], "Bad" if snap.shutdown else "Good", format_stamp(snap.stamps[i], time_format)
    if item in IDV_IDS:
        return IDV_IDS[item] in snap.active_idvs, "Good", now
    status: dict[str, Any] = {
        "Simulator.SimulatedTime": snap.t_s, "Simulator.Seed": snap.seed,
        "Simulator.ActiveDisturbances": snap.idv_text, "Simulator.Shutdown": snap.shutdown,
        "Simulator.ShutdownReason": snap.shutdown_reason or "",
    }
    if item in status:
        return status[item], "Good", now
    return None


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$", re.IGNORECASE)


def browse(path: str, recursive: bool, flat: bool) -> Iterator[str]:
    """OpenOPC ``list`` semantics on a two-level tree: branches are plant units, leaves item ids."""
    if flat:
        pattern = _glob(path)
        yield from (i for i in ITEM_IDS if pattern.match(i))
        return
    parts = [p for p in path.replace("/", ".").split(".") if p]
    if not parts or (len(parts) == 1 and "*" in parts[0]):
        pattern = _glob(parts[0] if parts else "*")
        branches = [b for b in _BRANCHES if pattern.match(b)]
        if recursive:
            for branch in branches:
                yield from _BRANCHES[branch]
        else:
            yield from branches
        return
    unit = next((b for b in _BRANCHES if b.lower() == parts[0].lower()), None)
    if unit is None:
        return
    pattern = _glob(".".join([unit, *parts[1:]]) if len(parts) > 1 else unit + ".*")
    yield from (i for i in _BRANCHES[unit] if pattern.match(i))


def item_properties(snap: Snapshot, tag: str, time_format: TimeFormat) -> list[tuple[int, str, Any]] | None:
    """``(id, description, value)`` of every OPC DA property of ``tag``, None if the item is unknown."""
    found = item_value(snap, tag, time_format)
    if found is None:
        return None
    value, quality, stamp = found
    vtype = {bool: "VT_BOOL", int: "VT_I8", str: "VT_BSTR"}.get(type(value), "VT_R8")
    props: list[tuple[int, str, Any]] = [
        (1, "Item Canonical DataType", vtype), (2, "Item Value", value), (3, "Item Quality", quality),
        (4, "Item Timestamp", stamp), (5, "Item Access Rights", "Read/Write" if tag in IDV_IDS else "Read"),
        (6, "Server Scan Rate", 100.0),
    ]
    if tag in PROCESS_INDEX:
        meta = PROCESS_TAGS[PROCESS_INDEX[tag]]
        props += [(100, "EU Units", meta.unit), (101, "Item Description", meta.description),
                  (102, "High EU", meta.high), (103, "Low EU", meta.low)]
    return props
