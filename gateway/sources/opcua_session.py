"""An OPC UA session for one connection: connect (secured, identity, refusals explained), resolve the configured
node ids and browse patterns to nodes, disconnect.

Shared by the collector's source (:mod:`gateway.sources.opcua`), its doctor checks
(:mod:`gateway.sources.opcua_diagnose`) and ``gatewayctl opcua``, none of which imports another for it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError

from gateway.errors import SourceError
from gateway.redact import redact_text, redact_url
from gateway.sources.opcua_browse import browse_patterns
from gateway.sources.opcua_security import GuardedClient, secure

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.opcua_config import OpcUaConnection, OpcUaSecurity


def tag_of(node_id: str) -> str:
    """The source tag name of a node id: its identifier without namespace, e.g. 'Reactor/Pressure'."""
    ident = node_id.split(";", 1)[-1]
    return ident[2:] if ident[:2] in ("s=", "i=", "g=", "b=") else ident


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


async def resolve_nodes(client: Client, cfg: OpcUaConnection) -> tuple[dict[str, Node], dict[str, str]]:
    """Configured node ids and browsed variables as nodes by tag, plus tags that cannot resolve (with why)."""
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
    nodes: dict[str, Node] = {}
    unresolved: dict[str, str] = {}
    for nid in cfg.nodes:
        try:
            nodes[tag_of(nid)] = client.get_node(with_index(nid, namespaces, default_ns))
        except KeyError as exc:
            unresolved[tag_of(nid)] = str(exc.args[0])
    if cfg.browse:
        for tag, node in (await browse_patterns(client, cfg.browse)).items():
            nodes.setdefault(tag, node)
    return nodes, unresolved


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
