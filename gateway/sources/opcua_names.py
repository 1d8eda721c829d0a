"""Tag names of OPC UA nodes, unique per connection across namespaces.

The rule (docs/collectors.md, "OPC UA tag names"):

1. A node's plain name is its identifier without namespace for a configured node id (``ns=2;s=Reactor/Pressure``
   -> ``Reactor/Pressure``, ``i=1001`` -> ``1001``), its browse path below Objects for a browsed one.
2. Configured node ids are named first. Nodes whose plain names are equal are each qualified with the short name of
   their namespace URI: ``line2:Reactor/Temperature``. Browsed nodes are named next, the same way; a browsed node
   whose name a configured one already has is qualified even when it is alone.
3. When a qualified name still collides (two namespace URIs with the same short name), the node id with its full
   namespace URI is the name: ``nsu=urn:site:line2;s=Reactor/Temperature``.

Namespace URIs, unlike namespace indexes, survive server restarts (servers renumber indexes), so the names do:
they change only when the configuration or the set of browsed nodes does. Pure functions, no asyncua: the
configuration model validates with them and the session resolves with them, so both agree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z0-9_.-]+")
_VERSION = re.compile(r"^[vV]?[0-9][0-9.]*$")


@dataclass(frozen=True)
class Candidate:
    """A node to name.

    Attributes:
        key: the node's identity; equal keys are one node (callers drop such duplicates before naming).
        plain: the identifier or browse path (rule 1).
        namespace: the namespace URI, or ``ns=<index>`` when the server names no URI for that index.
        identifier: the node id without namespace, e.g. ``s=Reactor/Pressure``.
    """

    key: Hashable
    plain: str
    namespace: str
    identifier: str


def identifier(node_id: str) -> str:
    """The node id without its namespace part: ``ns=2;s=A`` and ``nsu=urn:x;s=A`` -> ``s=A``."""
    return node_id.split(";", 1)[1] if node_id.startswith(("ns=", "nsu=")) and ";" in node_id else node_id


def plain_name(node_id: str) -> str:
    """The plain tag name of a configured node id: its identifier without namespace and type prefix."""
    ident = identifier(node_id)
    return ident[2:] if ident[:2] in ("s=", "i=", "g=", "b=") else ident


def short_name(namespace: str) -> str:
    """The qualifier of a namespace: the last word of its URI that is not a version (``urn:factoryedge:line2`` ->
    ``line2``, ``http://vendor.com/plant/1.04/`` -> ``plant``); ``ns=3`` (no URI known) -> ``ns3``."""
    if namespace.startswith("ns="):
        return "ns" + namespace[3:]
    words: list[str] = _WORD.findall(namespace)
    for word in reversed(words):
        if not _VERSION.match(word):
            return word
    return words[-1] if words else namespace


def name_at(c: Candidate, level: int) -> str:
    """The name of ``c`` at qualification ``level`` (0 plain, 1 short-qualified, 2 the full node id)."""
    if level == 0:
        return c.plain
    if level == 1:
        return f"{short_name(c.namespace)}:{c.plain}"
    prefix = c.namespace if c.namespace.startswith("ns=") else f"nsu={c.namespace}"
    return f"{prefix};{c.identifier}"


def unique_names(cands: Sequence[Candidate], taken: Collection[str] = ()) -> dict[Hashable, str]:
    """A name for each candidate (by key) following the module's rule; ``taken`` are names given already (to
    configured node ids), which these candidates give way to. Candidates must be distinct nodes."""
    level = {c.key: 0 for c in cands}
    while True:
        names = {c.key: name_at(c, level[c.key]) for c in cands}
        count = Counter(names.values())
        bump = [c.key for c in cands if level[c.key] < 2 and (count[names[c.key]] > 1 or names[c.key] in taken)]
        if not bump:
            return names
        for key in bump:
            level[key] += 1


def qualified(cands: Sequence[Candidate], names: dict[Hashable, str]) -> list[tuple[Candidate, str]]:
    """The candidates whose name is not their plain name (what a connection logs once)."""
    return [(c, names[c.key]) for c in cands if names[c.key] != c.plain]


def config_problem(nodes: Sequence[str], namespace_uri: str | None, tag_map: dict[str, str], tag_prefix: str) -> str:
    """Why configured node ids cannot all be told apart by tag name ('' when they can): the same node twice, a
    ``tag_map`` key that names two nodes, or two nodes published under one name. What qualification resolves is no
    problem; the namespace URIs of ``ns=<index>`` ids are only known at connect, so their qualified names are not
    checked here."""
    cands: list[Candidate] = []
    written: dict[Hashable, str] = {}
    for nid in nodes:
        if nid.startswith("nsu="):
            ns = nid[4:].partition(";")[0]
        elif nid.startswith("ns="):
            ns = f"ns={int(nid[3:].partition(';')[0])}"
        else:
            ns = namespace_uri or "ns=0"
        key = (ns, identifier(nid))
        if key in written:
            same = f"{nid!r} twice" if written[key] == nid else f"{written[key]!r} and {nid!r}, the same node,"
            return f"nodes lists {same} which would be one tag: remove one"
        written[key] = nid
        cands.append(Candidate(key, plain_name(nid), ns, identifier(nid)))
    names = unique_names(cands)
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.plain, []).append(c)
    for plain, group in groups.items():
        if len(group) > 1 and plain in tag_map:
            a, b = group[0], group[1]
            if a.namespace.startswith("ns=") or b.namespace.startswith("ns="):
                fix = (f"write them with nsu=<namespace URI> and key tag_map by '<short name of the URI>:{plain}' "
                       "(docs/collectors.md, OPC UA tag names)")
            else:
                fix = f"key tag_map by their tags {names[a.key]!r} and {names[b.key]!r}"
            return (f"tag_map key {plain!r} names two nodes, {written[a.key]!r} and {written[b.key]!r} (one name in "
                    f"two namespaces): {fix}")
    published: dict[str, Candidate] = {}
    for c in cands:
        if c.namespace.startswith("ns=") and names[c.key] != c.plain:
            continue  # qualified with the URI the server names for that index at connect: not known here
        pub = tag_map.get(names[c.key]) or f"{tag_prefix}{names[c.key]}"
        other = published.setdefault(pub, c)
        if other is not c:
            return (f"nodes {written[other.key]!r} and {written[c.key]!r} would both be published as tag {pub!r} "
                    "(tag_map): map each to its own name")
    return ""
