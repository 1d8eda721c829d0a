"""``gatewayctl doctor`` for one OPC UA connection: the checks, in the order an engineer would make them.

Endpoint reachable; the security it offers against what is configured; the server certificate trusted; a session
opened with the configured identity; every configured node id present (a wrong one is named with the closest
browse matches) and every browse pattern matching something. A problem is a finding, never an exception.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway.diagnostics import Finding, failed, passed, warning
from gateway.endpoints import host_port
from gateway.errors import EndpointError, SourceError
from gateway.redact import redact_text
from gateway.sources.opcua_browse import all_variables, closest
from gateway.sources.opcua_security import MODES, POLICY_URIS, check_server_certificate, first_cert, server_certificate
from gateway.sources.opcua_session import connect, disconnect, resolve

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.opcua_config import OpcUaConnection


async def _reachable(cfg: OpcUaConnection, timeout_s: float) -> Finding:
    check = f"opcua {cfg.name}: endpoint reachable"
    try:
        host, port = host_port(cfg.endpoint, what="endpoint")
    except EndpointError as exc:
        return failed(check, exc.message, exc.fix)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        return failed(check, f"{host}:{port} does not accept TCP connections ({type(exc).__name__}: {exc})",
                      "check that the server runs, the host and port in endpoint, and firewalls between")
    writer.close()
    return passed(check, f"{host}:{port} accepts connections")


async def diagnose(cfg: OpcUaConnection, timeout_s: float) -> list[Finding]:
    """See the module docstring."""
    findings = [await _reachable(cfg, timeout_s)]
    if findings[0].ok is False:
        return findings
    sec = cfg.security
    check = f"opcua {cfg.name}: security"
    try:
        endpoints, _ = await asyncio.wait_for(server_certificate(cfg.endpoint, timeout_s), timeout_s * 2)
    except (OSError, asyncio.TimeoutError, UaError) as exc:
        findings.append(failed(check, f"GetEndpoints failed ({type(exc).__name__}: {redact_text(str(exc))})",
                               "is this an OPC UA server? check the endpoint URL and port"))
        return findings
    offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
    match = [e for e in endpoints if e.SecurityMode == MODES[sec.mode]
             and e.SecurityPolicyUri == POLICY_URIS[sec.policy]]
    if not match:
        findings.append(failed(check, f"configured {sec.policy}/{sec.mode}, the server offers {', '.join(offered)}",
                               "set security.policy and security.mode to one the server offers"))
        return findings
    if sec.secure:
        findings.append(passed(check, f"{sec.policy}/{sec.mode} offered (server offers {', '.join(offered)})"))
    else:
        findings.append(warning(check, "plain channel: unsigned, unencrypted; anyone on the network can read and "
                                f"alter values (server offers {', '.join(offered)})",
                                "set security.policy: Basic256Sha256 and security.mode: SignAndEncrypt (or Sign)"))
    if sec.secure:
        check = f"opcua {cfg.name}: server certificate trusted"
        try:
            info = check_server_certificate(first_cert(match[0].ServerCertificate), sec, cfg.endpoint)
        except SourceError as exc:
            findings.append(failed(check, exc.message, exc.fix))
            return findings
        findings.append(passed(check, f"{info.subject} ({info.thumbprint}) valid until {info.not_after:%Y-%m-%d}"))
    check = f"opcua {cfg.name}: session"
    try:
        client = await asyncio.wait_for(connect(cfg), timeout_s * 3)
    except SourceError as exc:
        findings.append(failed(check, exc.message, exc.fix))
        return findings
    except asyncio.TimeoutError:
        findings.append(failed(check, "no session within the timeout", "check the server's load and log"))
        return findings
    identity = "user " + sec.username if sec.username else "certificate" if sec.user_certificate else "anonymous"
    findings.append(passed(check, f"session open ({identity})"))
    try:
        findings.extend(await asyncio.wait_for(_nodes(client, cfg), timeout_s * 3))
    except (SourceError, UaError, OSError, asyncio.TimeoutError) as exc:
        findings.append(failed(f"opcua {cfg.name}: nodes", f"{type(exc).__name__}: {redact_text(str(exc))}",
                               getattr(exc, "fix", "") or "check the node ids and browse patterns"))
    finally:
        await disconnect(client)
    return findings


async def _nodes(client: Client, cfg: OpcUaConnection) -> list[Finding]:
    check = f"opcua {cfg.name}: nodes"
    try:
        resolved = await resolve(client, cfg)
    except SourceError as exc:
        return [failed(check, exc.message, exc.fix)]
    nodes, unresolved, configured = resolved.nodes, resolved.unresolved, resolved.configured
    values = await client.read_attributes(list(nodes.values()), AttributeIds.Value) if nodes else []
    missing: dict[str, str] = dict(unresolved)
    for (tag, _), dv in zip(nodes.items(), values, strict=True):
        sc = dv.StatusCode
        if tag in configured and sc is not None and sc.value in (StatusCodes.BadNodeIdUnknown,
                                                                 StatusCodes.BadNodeIdInvalid,
                                                                 StatusCodes.BadAttributeIdInvalid):
            missing[tag] = sc.name
    if not missing:
        browsed = len(nodes) - len([t for t in nodes if t in configured])
        return [passed(check, f"{len(configured)} configured node ids exist"
                       + (f", browse found {browsed} more" if cfg.browse else ""))]
    candidates = await all_variables(client)
    out = []
    for tag, why in missing.items():
        wanted = configured.get(tag, tag)
        near = closest(wanted, candidates)
        out.append(failed(f"{check}: {wanted}", f"{wanted} does not exist on the server ({why})",
                          f"closest matches: {', '.join(near)}" if near else
                          "browse the server with `gatewayctl opcua browse URL i=85` to find the right node id"))
    ok = len(configured) - len(missing)
    if ok:
        out.append(warning(check, f"{ok} of {len(configured)} configured node ids exist"))
    return out
