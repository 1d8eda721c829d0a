"""An OPC UA session for one connection: connect (secured, identity, refusals explained), resolve the configured
node ids and browse patterns to nodes, disconnect.

Shared by the collector's source (:mod:`gateway.sources.opcua`), its doctor checks
(:mod:`gateway.sources.opcua_diagnose`) and ``gatewayctl opcua``, none of which imports another for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError

from gateway.errors import SourceError
from gateway.redact import redact_text, redact_url
from gateway.sources.opcua_browse import browse_patterns
from gateway.sources.opcua_names import Candidate, identifier, name_at, plain_name, qualified, unique_names
from gateway.sources.opcua_security import GuardedClient, secure

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.opcua_config import OpcUaConnection, OpcUaSecurity

log = logging.getLogger(__name__)


def tag_of(node_id: str) -> str:
    """The plain tag name of a node id: its identifier without namespace, e.g. 'Reactor/Pressure' (qualified by
    its namespace when another node has the same one: :mod:`gateway.sources.opcua_names`)."""
    return plain_name(node_id)


def with_index(node_id: str, namespaces: list[str], default_ns: int | None = None) -> str:
    """A node id with its namespace as an index of this server's NamespaceArray ('nsu=URI;' and bare ids resolved);
    raises KeyError naming a namespace URI the server does not have."""
    if node_id.startswith("nsu="):
        uri, _, rest = node_id[4:].partition(";")
        if uri not in namespaces:
            raise KeyError(f"namespace {uri} is not on the server")
        return f"ns={namespaces.index(uri)};{rest}"
    if not node_id.startswith("ns=") and default_ns is not None:
        return f"ns={default_ns};{node_id}"
    return node_id


@dataclass
class Resolved:
    """What a connection's node ids and browse patterns resolve to on one server, by unique tag name.

    Attributes:
        nodes: the nodes to read, by tag.
        unresolved: tags whose node id cannot resolve (a namespace URI the server lacks), with why.
        configured: the tag of each configured node id, as written (browsed tags are not in it).
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)
    configured: dict[str, str] = field(default_factory=dict)


async def resolve(client: Client, cfg: OpcUaConnection) -> Resolved:
    """Configured node ids, then browsed variables, named by :mod:`gateway.sources.opcua_names`; names qualified
    by namespace, and a node listed twice, are logged once per connection."""
    namespaces = await client.get_namespace_array()
    default_ns: int | None = None
    if cfg.namespace_uri:
        if cfg.namespace_uri not in namespaces:
            raise SourceError(
                f"{redact_url(cfg.endpoint)}: namespace {cfg.namespace_uri!r} is not on the server "
                f"(it has {namespaces})",
                fix="check namespace_uri against the server's NamespaceArray (gatewayctl opcua read URL i=2255)",
            )
        default_ns = namespaces.index(cfg.namespace_uri)

    def uri(index: int) -> str:
        return namespaces[index] if index < len(namespaces) else f"ns={index}"

    out = Resolved()
    cands: list[Candidate] = []
    written: dict[Hashable, tuple[str, Node | None, str]] = {}  # key -> (node id as written, node, why not)
    for nid in cfg.nodes:
        ident = identifier(nid)
        key: Hashable
        entry: tuple[str, Node | None, str]
        try:
            node = client.get_node(with_index(nid, namespaces, default_ns))
        except KeyError as exc:  # a namespace URI the server lacks: the tag is BAD, named all the same
            ns = nid[4:].partition(";")[0]
            key, entry = (ns, ident), (nid, None, str(exc.args[0]))
        else:
            ns = uri(node.nodeid.NamespaceIndex)
            key, entry = node.nodeid, (nid, node, "")
        if key in written:  # ns=2;s=A and nsu=<URI of 2>;s=A: validation cannot see that they are one node
            _once(cfg.name, f"nodes lists {written[key][0]!r} and {nid!r}, the same node: read once as one tag; "
                  "remove one")
            continue
        written[key] = entry
        cands.append(Candidate(key, plain_name(nid), ns, ident))
    names = unique_names(cands)
    for c in cands:
        nid, found, why = written[c.key]
        out.configured[names[c.key]] = nid
        if found is None:
            out.unresolved[names[c.key]] = why
        else:
            out.nodes[names[c.key]] = found
    browsed: list[Candidate] = []
    browsed_nodes: dict[Hashable, Node] = {}
    for path, nodeid in await browse_patterns(client, cfg.browse, properties=cfg.browse_properties):
        if nodeid not in written:  # a configured node keeps its configured name
            c = Candidate(nodeid, path, uri(nodeid.NamespaceIndex), identifier(nodeid.to_string()))
            browsed_nodes[nodeid] = client.get_node(nodeid)
            written[nodeid] = (name_at(c, 2), None, "")  # with its URI: the same words after a restart
            browsed.append(c)
    browsed_names = unique_names(browsed, taken=out.nodes.keys() | out.unresolved.keys())
    for c in browsed:
        out.nodes[browsed_names[c.key]] = browsed_nodes[c.key]
    for c, name in qualified(cands, names) + qualified(browsed, browsed_names):
        _once(cfg.name, f"tag {c.plain!r} is on more than one node: {written[c.key][0]!r} is tagged {name!r}, "
              "qualified by its namespace" + (f"; tag_map key {c.plain!r} matches none of them: key it by the "
                                              "qualified tag" if c.plain in cfg.tag_map else ""))
    return out


async def resolve_nodes(client: Client, cfg: OpcUaConnection) -> tuple[dict[str, Node], dict[str, str]]:
    """Configured node ids and browsed variables as nodes by tag, plus tags that cannot resolve (with why)."""
    r = await resolve(client, cfg)
    return r.nodes, r.unresolved


_logged: set[tuple[str, str]] = set()


def _once(connection: str, message: str) -> None:
    # resolution runs at every reconnect; what it finds about names is the same each time
    if (connection, message) not in _logged:
        _logged.add((connection, message))
        log.warning("connection %s: %s", connection, message)


async def connect(cfg: OpcUaConnection) -> Client:
    """A connected, secured client for one connection (raises SourceError naming the fix)."""
    client = GuardedClient(cfg.endpoint, allow_insecure_identity=cfg.security.allow_insecure_identity,
                           timeout=cfg.timeout_s, watchdog_intervall=cfg.keepalive_s)
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    client.name = client.description = "factoryedge gateway"
    # the configuration refuses user info in endpoints; masked anyway, as is the library's error text
    where = redact_url(cfg.endpoint)
    try:
        await secure(client, cfg.security, cfg.endpoint, cfg.timeout_s)
        await client.connect()
    except SourceError:
        raise
    except (OSError, asyncio.TimeoutError) as exc:
        raise SourceError(f"{where}: cannot connect ({type(exc).__name__}: {redact_text(str(exc))})",
                          fix="check the endpoint, the network and that the server runs", retryable=True) from exc
    except (UaError, AssertionError, ValueError) as exc:
        raise SourceError(f"{where}: the server refused the session ({type(exc).__name__}: "
                          f"{redact_text(str(exc))})", fix=_refusal_fix(exc, cfg.security), retryable=True) from exc
    return client


def _refusal_fix(exc: BaseException, sec: OpcUaSecurity) -> str:
    text = f"{type(exc).__name__} {exc}"
    if "Identity" in text or "User" in text:
        return "check security.username/password or the user certificate, and that the server accepts that identity"
    if sec.secure:
        return ("the server may not trust the gateway's certificate: copy "
                f"{sec.certificate or sec.pki_dir + '/own/cert.der'} into the server's trusted certificates, "
                "and check that policy and mode match an endpoint the server offers")
    return "check the server's log for why it refused the session"


async def disconnect(client: Client) -> None:
    """Close the session within 2 s, or drop the socket when the link is already gone."""
    try:
        await asyncio.wait_for(client.disconnect(), timeout=2)
    except (OSError, asyncio.TimeoutError, UaError, RuntimeError, AttributeError, ConnectionError):
        client.disconnect_socket()  # the link is already gone; nothing to close cleanly
