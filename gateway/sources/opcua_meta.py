"""Engineering units and ranges of OPC UA variables, read once per session and emitted as META records.

An analog variable (OPC UA Part 8, AnalogItemType) describes its value in properties: ``EURange`` (the range the
value normally spans), ``EngineeringUnits`` (an EUInformation: the unit's display name, its UNECE code as
``UnitId`` and the namespace of that code) and optionally ``InstrumentRange`` (what the instrument can measure).
After the nodes are resolved, each session asks for them in two kinds of request, in batches, whatever the number of
tags: one TranslateBrowsePathsToNodeIds for the property paths of every node, then one Read of the properties found
and of those nodes' Description attribute. A tag with at least one of the properties gets one ``Kind.META`` record
(:meth:`Emitter.emit_meta <gateway.sources.common.Emitter.emit_meta>`), value a dict such as ``{"unit": "°C",
"unit_id": 4408652, "unit_uri": "http://www.opcfoundation.org/UA/units/un/cefact", "eu_range": [0.0, 100.0],
"description": "Reactor temperature"}``; a tag without them gets none: most servers have none, which is nothing to
report, not an error. A server that refuses either service is logged once per connection and values flow without
units; a lost link raises as any other request does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError

from gateway.sources.common import Emitter

if TYPE_CHECKING:  # hints only: the config model imports the source, which imports this module
    from gateway.sources.opcua_config import OpcUaConnection

log = logging.getLogger(__name__)

# browse name (namespace 0, Part 8) -> key of the META value
PROPERTIES = {"EURange": "eu_range", "EngineeringUnits": "unit", "InstrumentRange": "instrument_range"}
BATCH = 1000  # browse paths per TranslateBrowsePathsToNodeIds call, attributes per Read call (servers' usual limit)
_HAS_PROPERTY = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty))

_refused: set[str] = set()  # connections whose server refused the requests: logged once per process


async def emit_metadata(client: Client, cfg: OpcUaConnection, nodes: dict[str, Node], emitter: Emitter) -> None:
    """Read the units and ranges of ``nodes`` (tag -> node) and emit one META record per tag that has any.

    Does nothing when the connection's ``metadata`` setting is off. A server that refuses the requests (a status
    code in the answer), or answers what asyncua cannot decode, is logged once per connection and leaves the tags
    without metadata: the values matter more. Transport errors propagate (the session is lost anyway).
    """
    if not cfg.metadata or not nodes:
        return
    try:
        found = await read_metadata(client, nodes)
    except UaError as exc:  # a refusal (a status code) or an answer asyncua cannot decode; a lost link fails next
        if cfg.name not in _refused:
            _refused.add(cfg.name)
            log.warning("connection %s: engineering units and ranges not read: the server refused the request "
                        "or its answer could not be decoded (%s: %s); values flow without them. Fix: set metadata: "
                        "false on this connection to stop asking", cfg.name, type(exc).__name__, exc)
        return
    for tag, meta in found.items():
        emitter.emit_meta(tag, meta)


async def read_metadata(client: Client, nodes: dict[str, Node]) -> dict[str, dict[str, Any]]:
    """The metadata of every tag that has at least one of :data:`PROPERTIES` (tag -> META value)."""
    tags = list(nodes)
    paths = [(tag, name, _path(nodes[tag].nodeid, name)) for tag in tags for name in PROPERTIES]
    results: list[ua.BrowsePathResult] = []
    for start in range(0, len(paths), BATCH):
        results.extend(await client.uaclient.translate_browsepaths_to_nodeids(
            [p for _, _, p in paths[start : start + BATCH]]))
    # (tag, key, node id to read, attribute)
    reads: list[tuple[str, str, ua.NodeId, int]] = []
    for (tag, name, _), result in zip(paths, results, strict=True):
        target = _target(result)
        if target is not None:
            reads.append((tag, PROPERTIES[name], target, ua.AttributeIds.Value))
    with_properties = list(dict.fromkeys(tag for tag, _, _, _ in reads))
    reads += [(tag, "description", nodes[tag].nodeid, ua.AttributeIds.Description) for tag in with_properties]
    values = await _read(client, [(nid, attr) for _, _, nid, attr in reads])
    out: dict[str, dict[str, Any]] = {}
    for (tag, key, _, _), dv in zip(reads, values, strict=True):
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            continue  # a property the server lists but cannot read: the others still count
        raw = dv.Value.Value if dv.Value is not None else None
        out.setdefault(tag, {}).update(_decode(key, raw))
    # a tag whose properties all failed to read or decode has only its description (or nothing): no META for it
    return {tag: meta for tag, meta in out.items() if meta.keys() - {"description"}}


def _path(start: ua.NodeId, name: str) -> ua.BrowsePath:
    # forward HasProperty references (and subtypes: IncludeSubtypes defaults to true); asyncua annotates its
    # Boolean fields with a marker class that no bool satisfies for mypy
    element = ua.RelativePathElement(ReferenceTypeId=_HAS_PROPERTY, IsInverse=False,  # type: ignore[arg-type]
                                     TargetName=ua.QualifiedName(name, 0))
    return ua.BrowsePath(StartingNode=start, RelativePath=ua.RelativePath(Elements=[element]))


def _target(result: ua.BrowsePathResult) -> ua.NodeId | None:
    """The property's node id, or None when the node has no such property (BadNoMatch) or it is on another
    server."""
    if not result.StatusCode.is_good() or not result.Targets:
        return None
    target = result.Targets[0].TargetId
    # asyncua decodes an ExpandedNodeId without server index or namespace URI as a plain NodeId
    if getattr(target, "ServerIndex", 0) or getattr(target, "NamespaceUri", None):
        return None  # a reference into another server's address space: not a property we can read here
    return ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)


async def _read(client: Client, items: Sequence[tuple[ua.NodeId, int]]) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for start in range(0, len(items), BATCH):
        params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=nid, AttributeId=attr)
                                                for nid, attr in items[start : start + BATCH]],
                                   TimestampsToReturn=ua.TimestampsToReturn.Neither)
        out.extend(await client.uaclient.read(params))
    return out


def _decode(key: str, raw: Any) -> dict[str, Any]:
    """The META entries one property or attribute gives; {} for what is missing, empty or not understood."""
    if key in ("eu_range", "instrument_range"):
        if isinstance(raw, ua.Range) and math.isfinite(raw.Low) and math.isfinite(raw.High):
            return {key: [float(raw.Low), float(raw.High)]}
        return {}  # a record carries no NaN (gateway.record.normalised): a range without finite ends is none
    if key == "unit":
        if not isinstance(raw, ua.EUInformation):
            return {}
        unit: dict[str, Any] = {"unit_id": int(raw.UnitId)}
        if raw.DisplayName is not None and raw.DisplayName.Text:
            unit["unit"] = raw.DisplayName.Text
        if raw.NamespaceUri:
            unit["unit_uri"] = raw.NamespaceUri
        return unit
    if key == "description" and isinstance(raw, ua.LocalizedText) and raw.Text:
        return {"description": raw.Text}
    return {}
