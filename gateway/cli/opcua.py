"""``gatewayctl opcua browse | read | subscribe | trust``: look at an OPC UA server without a running gateway.

The probes use the collector's own connect path (same security, certificates and identity handling), so what works
here works in the collector. Passwords come from an environment variable (``--password-env``, default
OPCUA_PASSWORD) or a prompt, never from the command line, and are never printed.

Examples:
  gatewayctl opcua browse opc.tcp://10.0.0.5:4840                  children of Objects
  gatewayctl opcua browse opc.tcp://10.0.0.5:4840 "ns=2;s=Reactor"
  gatewayctl opcua read opc.tcp://10.0.0.5:4840 "ns=2;s=Reactor/Pressure" "ns=2;s=Tank/Level"
  gatewayctl opcua subscribe opc.tcp://10.0.0.5:4840 "ns=2;s=Reactor/Pressure" --duration 30
  gatewayctl opcua trust opc.tcp://10.0.0.5:4840 --trust-dir opcua-pki/trusted     show it (exit 1: not trusted)
  gatewayctl opcua trust opc.tcp://10.0.0.5:4840 --trust-dir opcua-pki/trusted --accept \\
      --thumbprint 3f:a2:...:9c      the SHA-256 thumbprint read on the server itself, not from this output
  gatewayctl opcua read opc.tcp://10.0.0.5:4840 "ns=2;s=X" --policy Basic256Sha256 --mode SignAndEncrypt \\
      --pki-dir opcua-pki --user operator

A password is refused with --mode None (it would reach whoever answers at the URL) unless --allow-insecure-identity
is given. URLs with user info (opc.tcp://user:pass@host) are refused: use --user.

Exit codes: 0 ok; 1 the server failed, a node is bad, the certificate is not trusted, or --thumbprint does not match
it; 2 bad usage (--accept without --thumbprint, user info in the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, print_json, safe, table


def register(subparsers: Any) -> None:
    """Add the ``opcua`` command group to ``gatewayctl``'s subparsers."""
    parser = subparsers.add_parser("opcua", help="browse, read, subscribe to and trust an OPC UA server",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="opcua_command", required=True)
    browse = sub.add_parser("browse", help="list the children of a node (default: Objects)")
    browse.add_argument("url", help="endpoint, opc.tcp://host:port")
    browse.add_argument("node", nargs="?", default="i=85", help="node id (default i=85, the Objects folder)")
    _security(browse)
    browse.set_defaults(func=cmd_browse)
    read = sub.add_parser("read", help="read the value, status and timestamp of nodes")
    read.add_argument("url", help="endpoint, opc.tcp://host:port")
    read.add_argument("node", nargs="+", help="node ids, e.g. 'ns=2;s=Reactor/Pressure'")
    _security(read)
    read.set_defaults(func=cmd_read)
    subscribe = sub.add_parser("subscribe", help="print value changes as they arrive")
    subscribe.add_argument("url", help="endpoint, opc.tcp://host:port")
    subscribe.add_argument("node", nargs="+", help="node ids")
    subscribe.add_argument("--duration", type=float, default=10.0, metavar="S", help="stop after S seconds (10)")
    subscribe.add_argument("--count", type=int, default=0, metavar="N", help="stop after N changes (0: no limit)")
    subscribe.add_argument("--interval-ms", type=float, default=500.0, help="publishing interval (500)")
    _security(subscribe)
    subscribe.set_defaults(func=cmd_subscribe)
    trust = sub.add_parser("trust", help="show the server certificate; --accept --thumbprint adds it to the trust "
                           "list")
    trust.add_argument("url", help="endpoint, opc.tcp://host:port")
    trust.add_argument("--trust-dir", required=True, type=Path,
                       help="the collector's trust list folder (security.trust_dir, default <pki_dir>/trusted)")
    trust.add_argument("--accept", action="store_true",
                       help="copy the certificate into the trust list if it matches --thumbprint")
    trust.add_argument("--thumbprint", metavar="SHA256",
                       help="the SHA-256 thumbprint the certificate must have (hex, colons and case ignored), read "
                       "on the server itself: whatever answers at the URL could be another server")
    trust.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds (5)")
    trust.set_defaults(func=cmd_trust)


def _security(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=["None", "Basic256Sha256"], default="None", help="security policy")
    p.add_argument("--mode", choices=["None", "Sign", "SignAndEncrypt"], default="None", help="security mode")
    p.add_argument("--pki-dir", default="opcua-pki", help="folder of the client certificate (generated if absent)")
    p.add_argument("--trust-dir", help="trusted server certificates (default <pki-dir>/trusted)")
    p.add_argument("--cert", help="client certificate file (instead of the generated one)")
    p.add_argument("--key", help="private key of --cert")
    p.add_argument("--application-uri", help="application URI (must match the certificate)")
    p.add_argument("--user", help="user name identity; the password comes from --password-env or a prompt")
    p.add_argument("--password-env", default="OPCUA_PASSWORD", metavar="VAR",
                   help="environment variable holding the password (default OPCUA_PASSWORD)")
    p.add_argument("--allow-insecure-identity", action="store_true",
                   help="send the password even with --mode None (readable by whoever answers at the URL)")
    p.add_argument("--user-cert", help="certificate identity: user certificate file")
    p.add_argument("--user-key", help="certificate identity: its private key")
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds (5)")


def _connection(args: argparse.Namespace, nodes: list[str]) -> Any:
    from pydantic import ValidationError

    from gateway.errors import ConfigError
    from gateway.sources.opcua_config import OpcUaConnection

    _no_user_info(args.url)
    password = None
    if args.user:
        password = os.environ.get(args.password_env)
        if password is None:
            if not sys.stdin.isatty():
                raise ConfigError(f"--user {args.user} needs a password", fix=f"set {args.password_env}")
            password = getpass.getpass(f"password for {args.user}: ")
    security = {"policy": args.policy, "mode": args.mode, "pki_dir": args.pki_dir, "trust_dir": args.trust_dir,
                "certificate": args.cert, "private_key": args.key, "application_uri": args.application_uri,
                "username": args.user, "password": password, "user_certificate": args.user_cert,
                "user_private_key": args.user_key, "allow_insecure_identity": args.allow_insecure_identity or None}
    try:
        return OpcUaConnection(name="gatewayctl", endpoint=args.url, nodes=nodes or ["i=85"],
                               timeout_s=args.timeout, security={k: v for k, v in security.items() if v is not None})
    except ValidationError as exc:
        problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("bad OPC UA options", problems=problems, fix="see `gatewayctl opcua --help`") from exc


def _no_user_info(url: str) -> None:
    from gateway.errors import ConfigError
    from gateway.redact import userinfo_problem

    problem = userinfo_problem(url, "the URL")
    if problem:
        # one line, the URL masked: asyncua would otherwise log in with the credentials it finds there (NOTES 13)
        raise ConfigError(problem.replace("security.username / security.password, or a secret reference",
                                          "--user and --password-env"))


def _quiet() -> None:
    # asyncua logs tracebacks for refusals we already explain in one line
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)


async def _with_client(args: argparse.Namespace, nodes: list[str], work: Any) -> Any:
    from gateway.sources.opcua_session import connect, disconnect

    _quiet()

    client = await asyncio.wait_for(connect(_connection(args, nodes)), args.timeout * 3)
    try:
        return await work(client)
    finally:
        await disconnect(client)


async def _nodes(client: Any, node_ids: list[str]) -> list[Any]:
    """Nodes for node ids, 'nsu=URI;...' resolved against the server's namespaces."""
    from gateway.errors import SourceError
    from gateway.sources.opcua_session import with_index

    namespaces = await client.get_namespace_array()
    try:
        return [client.get_node(with_index(n, namespaces)) for n in node_ids]
    except KeyError as exc:
        raise SourceError(f"{exc.args[0]} (it has {namespaces})", fix="check the nsu= part of the node id") from exc


def _fmt(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dv_row(node: str, dv: Any) -> dict[str, Any]:
    from gateway.statuscodes import describe

    variant = dv.Value
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    return {"node": node, "value": variant.Value if variant is not None else None,
            "type": variant.VariantType.name if variant is not None else "",
            "status": describe(code), "status_code": code, "good": dv.StatusCode is None or dv.StatusCode.is_good(),
            "source_ts": dv.SourceTimestamp.isoformat() if dv.SourceTimestamp else None}


def _status(row: dict[str, Any]) -> str:
    """The status column: its name, and its number when it is not plain Good (what to look up in the server's
    documentation or the OPC UA specification)."""
    code = row["status_code"]
    return row["status"] if code == 0 else f"{row['status']} (0x{code:08X})"


def cmd_browse(args: argparse.Namespace) -> int:
    from asyncua.ua.attribute_ids import AttributeIds

    from gateway.sources.opcua_browse import children

    async def work(client: Any) -> list[dict[str, Any]]:
        [node] = await _nodes(client, [args.node])
        kids = await children(client, node.nodeid.to_string())
        variables = [k for k in kids if k.node_class == "Variable"]
        values = await client.read_attributes([client.get_node(k.node_id) for k in variables], AttributeIds.Value) \
            if variables else []
        by_id = {k.node_id: _dv_row(k.node_id, dv) for k, dv in zip(variables, values, strict=True)}
        none = {"value": None, "type": "", "status": "", "status_code": None}
        return [{"browse_name": k.browse_name, "node_class": k.node_class, "node_id": k.node_id,
                 **{f: by_id.get(k.node_id, none)[f] for f in none}} for k in kids]

    rows = asyncio.run(_with_client(args, [], work))
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"{args.node} has no children")
    else:
        print(table([[r["browse_name"], r["node_class"], r["node_id"], r["type"],
                      _fmt(r["value"]) if r["node_class"] == "Variable" else "",
                      _status(r) if r["status_code"] is not None else ""] for r in rows],
                    ["browse name", "class", "node id", "type", "value", "status"]))
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    from asyncua.ua.attribute_ids import AttributeIds

    async def work(client: Any) -> list[dict[str, Any]]:
        values = await client.read_attributes(await _nodes(client, args.node), AttributeIds.Value)
        return [_dv_row(n, dv) for n, dv in zip(args.node, values, strict=True)]

    rows = asyncio.run(_with_client(args, list(args.node), work))
    if args.json:
        print_json(rows)
    else:
        print(table([[r["node"], _fmt(r["value"]), r["type"], _status(r), r["source_ts"] or ""] for r in rows],
                    ["node", "value", "type", "status", "source timestamp"]))
    return EXIT_OK if all(r["good"] for r in rows) else EXIT_UNHEALTHY


def cmd_subscribe(args: argparse.Namespace) -> int:
    from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent

    async def work(client: Any) -> int:
        sub = await client.create_subscription(args.interval_ms, None)
        nodes = await _nodes(client, args.node)
        results = await sub.subscribe_data_change(nodes)
        bad = [(n, r) for n, r in zip(args.node, results, strict=True) if not isinstance(r, int)]
        for n, r in bad:
            print(f"{n}: rejected by the server ({r.name})", file=sys.stderr)
        names = {node.nodeid: n for node, n in zip(nodes, args.node, strict=True)}
        deadline, seen = time.monotonic() + args.duration, 0
        while (remaining := deadline - time.monotonic()) > 0 and (not args.count or seen < args.count):
            ev = await sub.next_event(timeout=remaining)
            if isinstance(ev, StatusChangeEvent):
                print(f"subscription ended: {ev.notification.Status.name}", file=sys.stderr)
                return EXIT_UNHEALTHY
            if not isinstance(ev, DataChangeEvent):
                continue
            seen += 1
            row = _dv_row(names.get(ev.node.nodeid, ev.node.nodeid.to_string()), ev.data.monitored_item.Value)
            if args.json:
                print_json(row)
            else:
                print(safe(f"{row['source_ts'] or '-':32}  {row['node']:40} {_fmt(row['value']):>20}  "
                           f"{_status(row)}"))
            sys.stdout.flush()
        return EXIT_UNHEALTHY if bad or not seen else EXIT_OK

    return int(asyncio.run(_with_client(args, list(args.node), work)))


def cmd_trust(args: argparse.Namespace) -> int:
    from asyncua.ua.uaerrors import UaError

    from gateway.errors import ConfigError
    from gateway.redact import redact_text, redact_url
    from gateway.sources.opcua_security import (
        cert_info,
        normalize_thumbprint,
        server_certificate,
        trust,
        trusted_thumbprints,
    )

    _no_user_info(args.url)
    expected = normalize_thumbprint(args.thumbprint) if args.thumbprint else None
    if args.accept and expected is None:
        # whatever answers at the URL would be trusted: a rogue server on the path, or a wrong address
        raise ConfigError("--accept needs --thumbprint SHA256: the certificate to trust must be named, or whatever "
                          "answers at the URL is trusted",
                          fix="read the server certificate's SHA-256 thumbprint on the server itself and pass it")
    if expected is not None and (len(expected) != 64 or any(ch not in "0123456789abcdef" for ch in expected)):
        raise ConfigError(f"--thumbprint {args.thumbprint} is not a SHA-256 thumbprint (64 hex digits; a SHA-1 one "
                          "has 40)", fix="pass the certificate's SHA-256 thumbprint")
    url = redact_url(args.url)
    _quiet()
    try:
        _, der = asyncio.run(asyncio.wait_for(server_certificate(args.url, args.timeout), args.timeout * 2))
    except (OSError, asyncio.TimeoutError, UaError) as exc:
        print(f"gatewayctl: {url}: cannot get the server's endpoints ({type(exc).__name__}: "
              f"{redact_text(str(exc))}). Fix: check the URL and that the server runs", file=sys.stderr)
        return EXIT_UNHEALTHY
    if not der:
        print(f"gatewayctl: {url} offers no certificate (security None only): nothing to trust", file=sys.stderr)
        return EXIT_USAGE
    info = cert_info(der)
    trusted = info.thumbprint in trusted_thumbprints(args.trust_dir)
    mismatch = expected is not None and expected != info.thumbprint
    written = None
    if args.accept and not trusted and not mismatch:
        written = trust(der, args.trust_dir)
        trusted = True
    out = {**info.as_dict(), "url": url, "trust_dir": str(args.trust_dir), "trusted": trusted,
           "written": str(written) if written else None}
    if args.json:
        print_json(out)
    else:
        labels = {"thumbprint": "sha256 thumbprint", "sha1": "sha1 (not pinned)"}
        print(table([[labels.get(k, k), str(out[k])] for k in ("subject", "application_uri", "thumbprint", "sha1",
                                                                "not_before", "not_after", "expired", "trusted")],
                    ["server certificate", ""]))
        if written:
            print(f"trusted: written to {written}")
        elif not trusted and not mismatch:
            print("not trusted: compare the SHA-256 thumbprint with the one the server shows locally, then run "
                  "again with --accept --thumbprint SHA256")
        if info.expired:
            print("WARNING: the certificate is not valid now; the collector refuses it until the server renews it")
    if mismatch:
        print(f"gatewayctl: {url} presents the certificate {safe(info.subject)} with SHA-256 thumbprint "
              f"{info.thumbprint}, which does not match --thumbprint {args.thumbprint}: nothing trusted. Fix: "
              "check that the URL reaches the intended server and that the thumbprint is its SHA-256 one",
              file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK if trusted and not info.expired else EXIT_UNHEALTHY
