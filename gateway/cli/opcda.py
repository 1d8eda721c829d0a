"""``gatewayctl opcda servers | list | read``: look at an OPC DA server through its OpenOPC gateway service.

The probes open a session exactly as the collector does (timeouts, 0.0.0.0 proxy rewrite, TLS through Pyro's
settings), so what works here works in the collector. Without ``--server`` the first server the gateway offers is
used.

As in the collector, a link without TLS is refused unless ``--allow-plaintext`` is given (then it warns), the
gateway's HMAC key is read from ``--hmac-key-file`` (never from the command line, which every user can see), and
nothing the gateway answers is decoded with anything but serpent.

Examples:
  gatewayctl opcda servers 10.0.0.7 --tls-ca ca.pem --tls-cert client.pem --tls-key client.key
  gatewayctl opcda list 10.0.0.7 --allow-plaintext                    top-level branches, over a plain link
  gatewayctl opcda list 10.0.0.7 'Reactor.*' --server Matrikon.OPC.Simulation.1 --allow-plaintext
  gatewayctl opcda list 10.0.0.7 '*' --flat --allow-plaintext         every item id
  gatewayctl opcda read 10.0.0.7 Random.Real8 Random.Int4 --server Matrikon.OPC.Simulation.1 --tls-ca ca.pem
  gatewayctl opcda read 10.0.0.7 Reactor.Pressure --tls-ca ca.pem --hmac-key-file /etc/factoryedge/opcda.key

Exit codes: 0 ok; 1 the gateway or server failed, or an item is not Good; 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_OK, EXIT_UNHEALTHY, print_json, safe, table


def register(subparsers: Any) -> None:
    """Add the ``opcda`` command group to ``gatewayctl``'s subparsers."""
    parser = subparsers.add_parser("opcda", help="list servers, browse and read items through an OpenOPC gateway",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="opcda_command", required=True)
    servers = sub.add_parser("servers", help="the OPC DA servers the gateway's host offers")
    servers.add_argument("host", help="host of the OpenOPC gateway service")
    _options(servers)
    servers.set_defaults(func=cmd_servers)
    browse = sub.add_parser("list", help="browse: branches, or item ids matching a pattern")
    browse.add_argument("host", help="host of the OpenOPC gateway service")
    browse.add_argument("pattern", nargs="?", default="*", help="path or pattern, e.g. 'Reactor.*' (default *)")
    browse.add_argument("--flat", action="store_true", help="match the pattern against every item id")
    browse.add_argument("--recursive", action="store_true", help="item ids below the matching branches")
    _options(browse)
    browse.set_defaults(func=cmd_list)
    read = sub.add_parser("read", help="read value, quality and timestamp of items")
    read.add_argument("host", help="host of the OpenOPC gateway service")
    read.add_argument("item", nargs="+", help="item ids, e.g. Random.Real8")
    _options(read)
    read.set_defaults(func=cmd_read)


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7766, help="gateway service port (7766)")
    p.add_argument("--server", help="OPC DA server ProgID (default: the first the gateway offers)")
    p.add_argument("--opc-host", default="localhost", help="host of the OPC DA server as the gateway sees it")
    p.add_argument("--timeout", type=float, default=5.0, help="timeout of every call in seconds (5)")
    p.add_argument("--tls-ca", help="CA certificate of the gateway (enables TLS)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS")
    p.add_argument("--tls-key", help="private key of --tls-cert")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="use a link without TLS anyway (unencrypted, unauthenticated; a warning is logged)")
    p.add_argument("--hmac-key-file", help="file holding the gateway service's Pyro HMAC key (its text, stripped)")
    p.add_argument("--rewrite-proxy-host", choices=["unspecified", "always", "never"], default="unspecified",
                   help="point the gateway's client proxy at HOST:PORT (default: when it says 0.0.0.0)")


def _config(args: argparse.Namespace, items: list[str], server: str | None) -> Any:
    from pydantic import ValidationError

    from gateway.errors import ConfigError
    from gateway.sources.opcda_config import OpcDaConnection

    tls = {"ca_file": args.tls_ca, "cert_file": args.tls_cert, "key_file": args.tls_key} if args.tls_ca else None
    if tls is None and not args.allow_plaintext:
        raise ConfigError(f"no --tls-ca: the link to the OpenOPC gateway {args.host}:{args.port} would be "
                          "unencrypted and unauthenticated (Pyro4 has none)",
                          fix="give --tls-ca (and --tls-cert/--tls-key for mutual TLS), or --allow-plaintext to "
                          "use a plain link knowingly")
    try:
        return OpcDaConnection(name="gatewayctl", host=args.host, port=args.port, server=server or "-",
                               opc_host=args.opc_host, items=items or ["-"], timeout_s=args.timeout,
                               connect_timeout_s=args.timeout, tls=tls, rewrite_proxy_host=args.rewrite_proxy_host,
                               allow_plaintext=args.allow_plaintext, hmac_key=_hmac_key(args))
    except ValidationError as exc:
        problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("bad OPC DA options", problems=problems, fix="see `gatewayctl opcda --help`") from exc


def _hmac_key(args: argparse.Namespace) -> str | None:
    from gateway.errors import ConfigError

    if not args.hmac_key_file:
        return None
    try:
        key = Path(args.hmac_key_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--hmac-key-file {args.hmac_key_file} cannot be read ({type(exc).__name__})",
                          fix="give a readable text file holding the gateway's HMAC key") from None
    if not key:
        raise ConfigError(f"--hmac-key-file {args.hmac_key_file} is empty", fix="write the gateway's HMAC key into it")
    return key


def _open(args: argparse.Namespace, items: list[str], *, server: bool) -> Any:
    """A session opened as the collector opens it; with ``server`` also connected to the OPC DA server."""
    from gateway.errors import SourceError
    from gateway.sources.opcda import Session, describe_error, warn_if_plain

    logging.getLogger("Pyro4").setLevel(logging.CRITICAL)  # its connect errors are explained in one line below
    session = Session(_config(args, items, args.server))
    warn_if_plain(session.cfg)
    try:
        session.open_client()
        if server:
            if args.server is None:
                offered = [str(s) for s in session.client.servers(args.opc_host)]
                if not offered:
                    raise SourceError(f"gateway {args.host}:{args.port} offers no OPC DA server",
                                      fix="start the OPC DA server on the Windows host, or pass --server")
                session.cfg = _config(args, items, offered[0])
            session.client.connect(session.cfg.server, args.opc_host)
    except SourceError:
        session.close()
        raise
    except Exception as exc:  # the failures the collector maps to reconnects, said in one line
        session.close()
        raise SourceError(describe_error(exc, session.cfg),
                          fix="check host and port, that the gateway service runs, --server (gatewayctl opcda "
                          "servers HOST) and the TLS options") from exc
    return session


def _call(session: Any, fn: Any) -> Any:
    """Run one gateway call and close the session; a failure becomes one line with the fix."""
    from gateway.errors import SourceError
    from gateway.sources.opcda import describe_error

    try:
        return fn(session.client)
    except Exception as exc:
        raise SourceError(describe_error(exc, session.cfg), fix="check the item ids and the gateway's log") from exc
    finally:
        session.close()


def cmd_servers(args: argparse.Namespace) -> int:
    offered = [str(s) for s in _call(_open(args, [], server=False), lambda c: c.servers(args.opc_host))]
    if args.json:
        print_json(offered)
    else:
        print("\n".join(map(safe, offered)) if offered else f"{args.host}: no OPC DA server offered")
    return EXIT_OK if offered else EXIT_UNHEALTHY


def cmd_list(args: argparse.Namespace) -> int:
    session = _open(args, [], server=True)
    found = [str(i) for i in _call(session, lambda c: c.list(args.pattern, recursive=args.recursive,
                                                               flat=args.flat))]
    if args.json:
        print_json(found)
    else:
        print("\n".join(map(safe, found)) if found else f"nothing matches {args.pattern!r} on {session.cfg.server}")
    return EXIT_OK if found else EXIT_UNHEALTHY


def cmd_read(args: argparse.Namespace) -> int:
    from gateway.sources.opcda import parse_timestamp

    raw = _call(_open(args, list(args.item), server=True),
                lambda c: c.read(list(args.item), sync=True, include_error=True, timeout=int(args.timeout * 1000)))
    rows = []
    for item, value, quality, stamp, error in raw:
        ns = parse_timestamp(stamp)
        rows.append({"item": item, "value": value, "quality": quality, "timestamp": stamp,
                     "utc": datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat() if ns is not None else None,
                     "error": error if quality == "Error" else ""})
    if args.json:
        print_json(rows)
    else:
        print(table([[r["item"], _fmt(r["value"]), r["quality"], r["utc"] or r["timestamp"] or "", r["error"]]
                     for r in rows], ["item", "value", "quality", "timestamp (UTC)", "error"]))
    return EXIT_OK if all(r["quality"] == "Good" for r in rows) else EXIT_UNHEALTHY


def _fmt(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
