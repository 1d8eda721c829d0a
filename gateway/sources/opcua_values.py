"""OPC UA values as records carry them: every built-in type, arrays, matrices and structures.

A record's value is a JSON value (:data:`gateway.record.Value`), so an OPC UA Variant becomes:

==========================================  ==========================================================
OPC UA                                      record value
==========================================  ==========================================================
Boolean, integers, Float, Double, String    as is (a NaN or infinite scalar is BAD, as every protocol)
DateTime                                    ISO 8601 text in UTC (``2026-12-02T16:45:00.123000+00:00``)
Guid                                        its text (``72962b91-fa75-4ae6-8d28-b404dc7daf63``)
ByteString                                  base64 text
LocalizedText                               its text (the locale is dropped)
QualifiedName                               ``ns:Name`` (``Name`` in namespace 0)
NodeId, ExpandedNodeId                      their OPC UA text (``ns=2;s=Tag``, ``svr=1;nsu=urn:x;i=5``)
StatusCode                                  its name (``BadSensorFailure``)
Variant (inside a Variant or an array)      the value inside it
DataValue (inside a Variant)                ``{"value": …, "status": name, "source_time": text}``
array, matrix                               a JSON list (a list of lists for a matrix), or one tag per
                                            element ``<tag>[i]`` (``<tag>[i][j]``) with ``arrays: elements``
structure (ExtensionObject)                 a JSON object of its fields (a union: of the one field it
                                            holds), decoded with the server's data type definitions
                                            (loaded once per session)
==========================================  ==========================================================

What cannot be carried (a structure the server describes no definition for, an element that is NaN inside an
array or structure, nesting deeper than :data:`gateway.record.MAX_VALUE_DEPTH`) makes that tag BAD with no value and
a reason, which :class:`ValueConverter` logs once per tag and session and puts into the connection's ``last_error``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.ua.uaerrors import UaError

from gateway.record import MAX_VALUE_DEPTH, Value

if TYPE_CHECKING:  # hints only: the config model imports the source, which imports this module
    from asyncua.client.client import Client
    from asyncua.common.node import Node

    from gateway.sources.common import Counters
    from gateway.sources.opcua_config import OpcUaConnection

log = logging.getLogger(__name__)

NOT_LOADED = "the server's data type definitions are not loaded"
NOT_DESCRIBED = "the server's data type definitions do not describe it"
SKIPPED = ("the server's data type definitions were not loaded: no node's data type needed them when the session "
           "started")
BATCH = 1000  # nodes per Read of their DataType attribute
_SCALARS = frozenset({float, int, bool, str, type(None)})  # what an array's elements mostly are, as they are
_NUMBERS = frozenset({float, int, bool})
# Data types of namespace 0 a variable may declare and still hold a structure of the server's own types: Structure,
# BaseDataType, OptionSet, Union. Every other namespace-0 type is decoded by asyncua without definitions.
_ABSTRACT_HOLDERS = frozenset({22, 24, 12755, 12756})


def needs_definitions(data_type: object) -> bool:
    """Whether a variable whose DataType attribute is ``data_type`` may carry a structure that asyncua decodes only
    with the server's data type definitions: a type of another namespace than 0 (the server's or a companion
    specification's), or an abstract type of namespace 0 that a structure of any type may stand for."""
    if not isinstance(data_type, ua.NodeId):
        return False  # unreadable: the value itself will say what it is
    return data_type.NamespaceIndex != 0 or data_type.Identifier in _ABSTRACT_HOLDERS


class _NotCarried(Exception):
    """Why a value (or a part of it) cannot be carried; raised from deep inside a value, caught by to_value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_value(raw: Any, missing_types: str = NOT_DESCRIBED) -> tuple[Value, str | None]:
    """The record value of an OPC UA value and ``None``, or ``None`` and why it cannot be carried.

    Args:
        raw: a ``ua.Variant`` or the Python value asyncua decoded (a scalar, a list, a structure's dataclass...).
        missing_types: why a structure arrived undecoded (asyncua decodes the structures whose definitions were
            loaded; the others stay raw ``ExtensionObject`` bytes): part of the reason given for it.
    """
    t = type(raw)
    if t is float or t is int or t is str or t is bool or raw is None:  # the common case first: tens of thousands/s
        return raw, None
    try:
        return _convert(raw, 0, missing_types), None
    except _NotCarried as exc:
        return None, exc.reason


def _convert(x: Any, depth: int, missing: str) -> Value:  # one branch per kind of OPC UA value
    t = type(x)
    if t is int or t is str or t is bool or x is None:
        return x  # type: ignore[no-any-return]
    if t is float:
        if depth and not math.isfinite(x):  # a scalar NaN stays the emitter's rule (BAD, not logged, as every protocol)
            raise _NotCarried("an element is NaN or infinite")
        return x  # type: ignore[no-any-return]
    if depth > MAX_VALUE_DEPTH:
        raise _NotCarried(f"the value nests deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(x, ua.Variant):  # a Variant inside a Variant (BaseDataType arrays of mixed kinds): no new level
        return _convert(x.Value, depth, missing)
    if isinstance(x, list | tuple):
        kinds = set(map(type, x))
        if kinds <= _SCALARS:  # an array of numbers, booleans or text: 10x faster than element by element
            if float in kinds and not all(map(math.isfinite, x if kinds <= _NUMBERS else
                                                  [e for e in x if type(e) is float])):
                raise _NotCarried("an element is NaN or infinite")
            return list(x)
        return [_convert(e, depth + 1, missing) for e in x]
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):  # enumerations (IntEnum), option sets (IntFlag): their number, as OPC UA sends them
        return int(x)
    if isinstance(x, float):
        return _convert(float(x), depth, missing)
    if isinstance(x, str):
        return str(x)
    if isinstance(x, bytes | bytearray):
        return base64.b64encode(x).decode("ascii")
    if isinstance(x, datetime):
        return (x.astimezone(timezone.utc) if x.tzinfo else x.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, ua.LocalizedText):
        return x.Text or ""
    if isinstance(x, ua.QualifiedName):
        return f"{x.NamespaceIndex}:{x.Name}" if x.NamespaceIndex else (x.Name or "")
    if isinstance(x, ua.ExpandedNodeId):
        return _expanded(x)
    if isinstance(x, ua.NodeId):
        return x.to_string()
    if isinstance(x, ua.StatusCode):
        return x.name
    if isinstance(x, ua.DataValue):
        return {"value": _convert(x.Value, depth + 1, missing),
                "status": x.StatusCode.name if x.StatusCode is not None else "Good",
                "source_time": _convert(x.SourceTimestamp, depth + 1, missing)}
    if isinstance(x, ua.ExtensionObject):
        if x.Body is None and x.TypeId.Identifier == 0:
            return None  # a null structure
        raise _NotCarried(f"a structure with encoding {x.TypeId.to_string()} cannot be decoded: {missing}")
    if isinstance(x, ua.UaUnion):  # the one field that is set, by name (asyncua makes each a property)
        chosen = [(n, getattr(x, n)) for n, a in vars(type(x)).items() if isinstance(a, property)]
        return {n: _convert(v, depth + 1, missing) for n, v in chosen if v is not None} or None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # a decoded structure (standard or the server's)
        # repr=False marks asyncua's own bookkeeping fields (the optional-field mask, a union's switch)
        return {f.name: _convert(getattr(x, f.name), depth + 1, missing) for f in dataclasses.fields(x) if f.repr}
    raise _NotCarried(f"a value of type {t.__name__} is not carried")


def _expanded(x: ua.ExpandedNodeId) -> str:
    """The OPC UA text form (Part 6, 5.3.1.11): ``svr=`` and ``nsu=`` before the node id."""
    head = f"svr={x.ServerIndex};" if x.ServerIndex else ""
    if x.NamespaceUri:
        return f"{head}nsu={x.NamespaceUri};{ua.NodeId(x.Identifier, ua.Int16(0), x.NodeIdType).to_string()}"
    return head + ua.NodeId(x.Identifier, x.NamespaceIndex, x.NodeIdType).to_string()


def elements(tag: str, value: list[Any]) -> list[tuple[str, Any]]:
    """``(element tag, element)`` for every element of an array, ``<tag>[i]``; a matrix (nested lists, as asyncua
    reshapes one by its dimensions) goes down to its scalars, ``<tag>[i][j]``."""
    out: list[tuple[str, Any]] = []
    for i, e in enumerate(value):
        name = f"{tag}[{i}]"
        if isinstance(e, list):
            out.extend(elements(name, e))
        else:
            out.append((name, e))
    return out


class ValueConverter:
    """One session's conversion of a connection's values: array mode per tag, structures decoded with the server's
    definitions, reasons logged once per tag.

    The collector builds a source, and so a converter, per session: "once per session" is once per instance.
    """

    def __init__(self, cfg: OpcUaConnection) -> None:
        self.name = cfg.name
        self.timeout_s = cfg.timeout_s
        self._default_mode = cfg.arrays
        self._mode_by_tag = cfg.arrays_by_tag
        self.missing_types = NOT_LOADED
        self._logged: set[str] = set()
        self._elements: dict[str, list[str]] = {}  # tag -> the element tags of its last array (elements mode)

    async def load_definitions(self, client: Client, nodes: Iterable[Node]) -> None:
        """Read the server's data type definitions (OPC UA 1.04 DataTypeDefinition attributes) so that asyncua
        decodes the server's own structures: once per session, before the first value, because a server may change
        its types across restarts. A server without them (before 1.04, or one that does not expose them) is not an
        error: only its structures are BAD, saying why.

        Loading them browses the server's whole type tree (0.5 to 1.5 s against node-opcua on this machine), so it
        is done only when a node's data type may hold such a structure (:func:`needs_definitions`), which one Read of
        the nodes' DataType attribute per 1,000 nodes tells.
        """
        t0 = time.monotonic()
        node_list = list(nodes)
        types: list[ua.DataValue] = []
        for start in range(0, len(node_list), BATCH):
            types.extend(await client.read_attributes(node_list[start : start + BATCH], ua.AttributeIds.DataType))
        if not any(needs_definitions(dv.Value.Value if dv.Value is not None else None) for dv in types):
            self.missing_types = SKIPPED
            return
        try:
            loaded = await asyncio.wait_for(client.load_data_type_definitions(), self.timeout_s)
        except asyncio.TimeoutError:
            self.missing_types = (f"loading the server's data type definitions took over timeout_s ({self.timeout_s} "
                                  "s)")
        except (UaError, ValueError, KeyError, AttributeError, TypeError, NotImplementedError) as exc:
            self.missing_types = (f"the server's data type definitions could not be loaded ({type(exc).__name__}: "
                                  f"{exc})")
        else:
            self.missing_types = NOT_DESCRIBED
            log.debug("connection %s: %d data types loaded in %.3f s", self.name, len(loaded),
                      time.monotonic() - t0)
            return
        log.info("connection %s: %s after %.3f s; structures of the server's own types will be BAD", self.name,
                 self.missing_types, time.monotonic() - t0)

    def convert(self, tag: str, variant: ua.Variant | None, counters: Counters) -> list[tuple[str, Value, str | None]]:
        """``(tag, value, reason)`` for one value read: one for the tag, or one per element of an array in
        ``elements`` mode (plus a BAD one with no value per element an array no longer has). ``reason`` is not
        None when the value cannot be carried: the record is BAD with no value, and the reason is logged once per
        tag and session, counted (``undecodable_values_read``) and shown as the connection's ``last_error``."""
        raw = variant.Value if variant is not None else None
        if isinstance(raw, list) and self._mode_by_tag.get(tag, self._default_mode) == "elements":
            out: list[tuple[str, Value, str | None]] = []
            for name, element in elements(tag, raw):
                out.append(self._one(name, element, counters))
            names = [name for name, _, _ in out]
            gone = self._elements.get(tag, [])[len(names):]
            self._elements[tag] = names
            out.extend((name, None, None) for name in gone)  # no value, so BAD: the array shrank
            return out
        return [self._one(tag, raw, counters)]

    def _one(self, tag: str, raw: Any, counters: Counters) -> tuple[str, Value, str | None]:
        value, reason = to_value(raw, self.missing_types)
        if reason is not None:
            extra = counters.extra
            extra["undecodable_values_read"] = int(extra.get("undecodable_values_read", 0)) + 1
            if tag not in self._logged:
                self._logged.add(tag)
                counters.last_error = f"tag {tag}: {reason}"
                log.warning("connection %s: tag %s is BAD with no value: %s (logged once per tag and session, "
                            "counted as undecodable_values_read; the other tags are not affected)", self.name, tag,
                            reason)
        return tag, value, reason

    def expand(self, tags: Iterable[str]) -> list[str]:
        """The tags records were made for: an array read element by element stands for its element tags (so that a
        lost link marks each of them BAD)."""
        return [name for tag in tags for name in self._elements.get(tag, [tag])]
