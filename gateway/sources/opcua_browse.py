"""Browsing an OPC UA address space: tag discovery by pattern, the children of a node, and the closest matches of a
node id that does not exist (for ``gatewayctl doctor`` and the CLI).

A pattern is a path of browse names below the Objects folder (a leading ``Objects/``, or ``Root/Objects/``, is
optional), ``/``-separated, each segment a shell pattern matched against the browse name without its namespace:
``Reactor/*``, ``Plant/**``, ``**/Level``. ``**`` is zero or more levels anywhere in the path. Browsing follows
forward hierarchical references (Organizes, HasComponent, ...) but not HasProperty unless asked (``properties``):
properties such as EURange describe a variable, they are not process values. A wildcard does not enter the standard
objects of namespace 0 right below Objects (the Server object and its diagnostics); a segment naming them does
(``Server/**``). Only variables are tags; a tag is named by its path below Objects (``Reactor/Pressure``). Browsing
goes level by level with one Browse call per level, and stops at ``MAX_VISITED`` nodes so that a pattern like
``**`` on a huge server cannot run away. A pattern matching nothing raises an error saying what was searched: how
many nodes, where it stopped, the closest names seen there, and the form patterns take.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from gateway.errors import SourceError

MAX_VISITED = 200_000
BATCH = 500  # nodes per Browse request
HAS_PROPERTY = 46
# HierarchicalReferences, HasChild, Organizes, Aggregates, HasComponent, HasOrderedComponent (and HasProperty)
_HIERARCHICAL = (33, 34, 35, 44, 47, 49, HAS_PROPERTY)
_OBJECTS = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
FORM = ("patterns are paths of browse names below Objects ('Objects/' optional), '*' any name on one level, '**' "
        "zero or more levels, e.g. Reactor/*, Plant/**, **/Level; `gatewayctl opcua browse URL` lists the names")


@dataclass(frozen=True)
class Child:
    """One reference of a browsed node."""

    browse_name: str
    node_id: str
    node_class: str
    path: str


async def _browse_many(client: Client, node_ids: list[ua.NodeId],
                       properties: bool = True) -> list[list[ua.ReferenceDescription]]:
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
            out.append([r for r in refs if r.IsForward and _hierarchical(r)
                        and (properties or not _property(r))])
    return out


def _hierarchical(ref: ua.ReferenceDescription) -> bool:
    return bool(ref.ReferenceTypeId.NamespaceIndex == 0 and ref.ReferenceTypeId.Identifier in _HIERARCHICAL)


def _property(ref: ua.ReferenceDescription) -> bool:
    return bool(ref.ReferenceTypeId.NamespaceIndex == 0 and ref.ReferenceTypeId.Identifier == HAS_PROPERTY)


def _nid(ref: ua.ReferenceDescription) -> ua.NodeId:
    return ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)


def segments(pattern: str) -> list[str]:
    """The segments of a pattern below Objects (``Objects/`` and ``Root/Objects/`` taken off)."""
    segs = [s for s in pattern.strip().strip("/").split("/") if s]
    if segs[:1] == ["Root"]:
        segs = segs[1:]
    return segs[1:] if segs[:1] == ["Objects"] else segs


async def browse_patterns(client: Client, patterns: list[str],
                          properties: bool = False) -> list[tuple[str, ua.NodeId]]:
    """Variables matching any pattern, as (path below Objects, node id), each node once, in pattern order and by
    path within one. Raises SourceError explaining what was searched when a pattern matches no variable."""
    found: list[tuple[str, ua.NodeId]] = []
    taken: set[ua.NodeId] = set()
    for pattern in patterns:
        segs = segments(pattern)
        if not segs:
            raise SourceError(f"browse pattern {pattern!r} names no level below Objects", fix=FORM)
        search = _Search()
        matches = await _match(client, segs, properties, search)
        if not matches:
            raise SourceError(f"browse pattern {pattern!r} matches no variable: {search.explain(segs, properties)}",
                              fix=FORM)
        for path, nid in matches:
            if nid not in taken:
                taken.add(nid)
                found.append((path, nid))
    return found


@dataclass
class _Search:
    """What one pattern's search saw, to explain an empty match."""

    visited: int = 0
    tried: dict[int, str] = field(default_factory=dict)  # segment index -> the first path where it was tried
    tries: dict[int, int] = field(default_factory=dict)  # segment index -> at how many nodes
    matched: set[int] = field(default_factory=set)
    names: dict[int, set[str]] = field(default_factory=dict)  # segment index -> names that did not match it
    properties: dict[int, set[str]] = field(default_factory=dict)  # matching names skipped as properties
    not_variables: list[str] = field(default_factory=list)  # whole matches that are not variables

    def saw(self, bucket: dict[int, set[str]], i: int, name: str) -> None:
        names = bucket.setdefault(i, set())
        if len(names) < 5000:  # enough to suggest from, bounded on huge servers
            names.add(name)

    def explain(self, segs: list[str], properties: bool) -> str:
        what = ("searched from Objects (i=85) along hierarchical references"
                + ("" if properties else " without properties") + f", {self.visited} nodes visited")
        failed = sorted(i for i in self.tried if i not in self.matched)
        if failed:
            i = failed[0]
            seen = sorted(self.names.get(i, ()))
            near = difflib.get_close_matches(segs[i], seen, n=5, cutoff=0.3) or seen[:5]
            more = self.tries[i] - 1
            what += (f"; nothing below {self.tried[i] or 'Objects'}"
                     + (f" (or {more} other nodes)" if more else "")
                     + f" matches segment {i + 1} {segs[i]!r}; closest names there: "
                     + (", ".join(near) if near else "none"))
            props = sorted(self.properties.get(i, ()))
            if props:
                what += (f"; {', '.join(props[:5])} {'is a property' if len(props) == 1 else 'are properties'}: set "
                         "browse_properties: true to take properties")
        elif self.not_variables:
            what += (f"; the nodes it reaches are not variables ({len(self.not_variables)}, e.g. "
                     f"{self.not_variables[0]}): end the pattern with /* for their variables or /** for all below")
        return what


_State = tuple[ua.NodeId, tuple[str, ...], int, bool]  # node, path below Objects, segment index, is a variable


def _closure(states: list[_State], segs: list[str]) -> list[_State]:
    # a state at '**' may also skip it: zero levels
    out: list[_State] = []
    for node, path, i, var in states:
        out.append((node, path, i, var))
        while i < len(segs) and segs[i] == "**":
            i += 1
            out.append((node, path, i, var))
    return out


async def _match(client: Client, segs: list[str], properties: bool, search: _Search) -> list[tuple[str, ua.NodeId]]:
    frontier = _closure([(_OBJECTS, (), 0, False)], segs)
    expanded: set[tuple[ua.NodeId, int]] = set()
    results: dict[ua.NodeId, str] = {}
    while frontier:
        todo: list[_State] = []
        for node, path, i, var in frontier:
            if i == len(segs):
                if var:
                    results.setdefault(node, "/".join(path))
                elif path and len(search.not_variables) < 100:
                    search.not_variables.append("/".join(path))
            elif (node, i) not in expanded:
                expanded.add((node, i))
                todo.append((node, path, i, var))
        search.visited += len(todo)
        if search.visited > MAX_VISITED:
            raise SourceError(f"browse pattern {'/'.join(segs)!r} visits more than {MAX_VISITED} nodes",
                              fix="make the pattern more specific (fewer '**', or a first segment naming a folder)")
        nxt: list[_State] = []
        # properties are browsed even when not followed, so that an empty match can say one was skipped
        for (node, path, i, _), refs in zip(todo, await _browse_many(client, [s[0] for s in todo]), strict=True):
            seg = segs[i]
            if seg != "**":
                search.tried.setdefault(i, "/".join(path))
                search.tries[i] = search.tries.get(i, 0) + 1
            wild = any(ch in seg for ch in "*?[")
            for ref in refs:
                name, child, prop = ref.BrowseName.Name or "", _nid(ref), _property(ref)
                if wild and node == _OBJECTS and child.NamespaceIndex == 0:
                    continue  # the Server object and its diagnostics: not process values, unless named
                state = (child, (*path, name), i, ref.NodeClass == ua.NodeClass.Variable)
                if seg == "**":
                    if not prop or properties:
                        nxt.append(state)
                elif not fnmatch.fnmatchcase(name, seg):
                    if properties or not prop:
                        search.saw(search.names, i, name)
                elif prop and not properties:
                    search.saw(search.properties, i, name)
                else:
                    search.matched.add(i)
                    nxt.append((child, state[1], i + 1, state[3]))
        frontier = _closure(nxt, segs)
    return sorted((path, nid) for nid, path in results.items())


async def children(client: Client, node_id: str) -> list[Child]:
    """The hierarchical children of one node (what ``gatewayctl opcua browse`` lists)."""
    [refs] = await _browse_many(client, [ua.NodeId.from_string(node_id)])  # properties too: a person browses
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
