"""Browsing an OPC UA address space: tag discovery by pattern, the children of a node, and the closest matches of a
node id that does not exist (for ``gatewayctl doctor`` and the CLI).

A pattern is a path of browse names from the Root folder, ``/``-separated, each segment a shell pattern matched
against the browse name without its namespace (``Objects/Reactor/*``, ``Objects/**/Level``); ``**`` spans any number
of levels. Only variables are tags; a tag is named by its path below ``Objects`` (``Reactor/Pressure``). Browsing
goes level by level with one Browse call per level, and stops at ``MAX_VISITED`` nodes so that a pattern like
``Objects/**`` on a huge server cannot run away.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.object_ids import ObjectIds

from gateway.errors import SourceError

MAX_VISITED = 200_000
BATCH = 500  # nodes per Browse request


@dataclass(frozen=True)
class Child:
    """One reference of a browsed node."""

    browse_name: str
    node_id: str
    node_class: str
    path: str


async def _browse_many(client: Client, node_ids: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for start in range(0, len(node_ids), BATCH):
        chunk = [client.get_node(n) for n in node_ids[start : start + BATCH]]
        for _, result in await client.browse_nodes(chunk):
            refs = list(result.References or [])
            cp = result.ContinuationPoint
            while cp:  # the server split a long list of references
                params = ua.BrowseNextParameters()
                params.ContinuationPoints = [cp]
                nxt = (await client.uaclient.browse_next(params))[0]
                refs.extend(nxt.References or [])
                cp = nxt.ContinuationPoint
            out.append([r for r in refs if r.IsForward and _hierarchical(r)])
    return out


def _hierarchical(ref: ua.ReferenceDescription) -> bool:
    # Organizes, HasComponent, HasProperty, HasChild, Aggregates, HasOrderedComponent, FolderType refs
    return ref.ReferenceTypeId.NamespaceIndex == 0 and ref.ReferenceTypeId.Identifier in (33, 35, 46, 47, 44, 34, 49)


def _nid(ref: ua.ReferenceDescription) -> ua.NodeId:
    return ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)


async def browse_patterns(client: Client, patterns: list[str]) -> dict[str, Node]:
    """Variables matching any pattern, by tag name (path below Objects). Raises on a pattern matching nothing."""
    found: dict[str, Node] = {}
    for pattern in patterns:
        segments = [s for s in pattern.strip("/").split("/") if s]
        matches = await _match(client, segments)
        if not matches:
            raise SourceError(f"browse pattern {pattern!r} matches no variable on the server",
                              fix="check the path with `gatewayctl opcua browse URL i=85` (Objects) and fix the "
                              "pattern; segments are browse names, e.g. Objects/Reactor/*")
        for path, nid in matches:
            found.setdefault(path, client.get_node(nid))
    return found


async def _match(client: Client, segments: list[str]) -> list[tuple[str, ua.NodeId]]:
    # states: (node, path of browse names, index into segments); '**' may consume zero or more levels
    frontier: list[tuple[ua.NodeId, tuple[str, ...], int]] = [(ua.NodeId(ua.Int32(ObjectIds.RootFolder)), (), 0)]
    seen: set[tuple[ua.NodeId, int]] = set()
    results: list[tuple[str, ua.NodeId]] = []
    visited = 0
    while frontier:
        expanded: list[tuple[ua.NodeId, tuple[str, ...], int]] = []
        for node, path, i in frontier:  # '**' matching zero levels
            expanded.append((node, path, i))
            while i < len(segments) and segments[i] == "**":
                i += 1
                expanded.append((node, path, i))
        todo = [(n, p, i) for n, p, i in expanded if i < len(segments) and (n, i) not in seen]
        for n, _, i in todo:
            seen.add((n, i))
        visited += len(todo)
        if visited > MAX_VISITED:
            raise SourceError(f"browse pattern {'/'.join(segments)!r} visits more than {MAX_VISITED} nodes",
                              fix="make the pattern more specific (fewer '**')")
        children = await _browse_many(client, [n for n, _, _ in todo])
        frontier = []
        for (_, path, i), refs in zip(todo, children, strict=True):
            seg = segments[i]
            for ref in refs:
                name = ref.BrowseName.Name or ""
                child = (_nid(ref), (*path, name))
                if seg == "**":
                    frontier.append((*child, i))
                if seg != "**" and fnmatch.fnmatchcase(name, seg):
                    if i + 1 == len(segments):
                        if ref.NodeClass == ua.NodeClass.Variable:
                            results.append(("/".join(child[1][1:] if child[1][0] == "Objects" else child[1]),
                                            child[0]))
                    else:
                        frontier.append((*child, i + 1))
    results.sort()
    return results


async def children(client: Client, node_id: str) -> list[Child]:
    """The hierarchical children of one node (what ``gatewayctl opcua browse`` lists)."""
    [refs] = await _browse_many(client, [ua.NodeId.from_string(node_id)])
    return [Child(r.BrowseName.Name or "", _nid(r).to_string(), r.NodeClass.name, r.BrowseName.Name or "")
            for r in refs]


async def all_variables(client: Client, max_nodes: int = 20_000, max_depth: int = 8) -> list[Child]:
    """Variables below Objects, breadth first, bounded (for suggestions, not for collection)."""
    out: list[Child] = []
    frontier: list[tuple[ua.NodeId, str]] = [(ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder)), "")]
    seen: set[ua.NodeId] = set()
    for _ in range(max_depth):
        todo = [(n, p) for n, p in frontier if n not in seen]
        if not todo or len(seen) > max_nodes:
            break
        seen.update(n for n, _ in todo)
        frontier = []
        for (_, path), refs in zip(todo, await _browse_many(client, [n for n, _ in todo]), strict=True):
            for r in refs:
                if r.NodeId.NamespaceIndex == 0:
                    continue  # the standard Server object and types: never a plant tag
                child_path = f"{path}/{r.BrowseName.Name}" if path else (r.BrowseName.Name or "")
                if r.NodeClass == ua.NodeClass.Variable:
                    out.append(Child(r.BrowseName.Name or "", _nid(r).to_string(), "Variable", child_path))
                frontier.append((_nid(r), child_path))
    return out


def closest(wanted: str, candidates: list[Child], n: int = 3) -> list[str]:
    """The node ids of the candidates closest to a node id or path that does not exist."""
    key = wanted.split(";", 1)[-1]
    key = key[2:] if key[:2] in ("s=", "i=", "g=", "b=") else key
    by_key: dict[str, str] = {}
    for c in candidates:
        ident = c.node_id.split(";", 1)[-1]
        by_key.setdefault(ident[2:] if ident[:2] in ("s=", "i=", "g=", "b=") else ident, c.node_id)
        by_key.setdefault(c.path, c.node_id)
    picked = difflib.get_close_matches(key, list(by_key), n=n * 2, cutoff=0.4)
    out: list[str] = []
    for k in picked:
        if by_key[k] not in out:
            out.append(by_key[k])
    return out[:n]
