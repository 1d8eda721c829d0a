"""``python -m simulator``: serve the TEP over OPC UA, Modbus TCP and OPC DA, or control a running simulator.

Serve (default)::

    python -m simulator --speed 10 --seed 7 --idv 6@8h --endpoints opcua,modbus

Control a running simulator through its OPC UA endpoint (``gatewayctl sim`` forwards here)::

    python -m simulator idv 6 on --opcua opc.tcp://127.0.0.1:4840
    python -m simulator reset --seed 3
    python -m simulator status
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import cast

from simulator import control
from simulator.app import AppConfig, Endpoint, build_simulation, serve_forever
from simulator.opcua_security import SECURITY_MODES
from simulator.plant import IDV_NUMBERS, check_idv
from simulator.plantproc import RemoteSimulation
from simulator.runtime import Simulation, SimulationView, parse_duration, parse_idv_schedule

ENDPOINTS = ("opcua", "modbus", "opcda")
CONTROL_COMMANDS = ("idv", "clear", "reset", "status")


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator", description="Tennessee Eastman process simulator.",
        epilog=f"Control a running simulator: python -m simulator {{{','.join(CONTROL_COMMANDS)}}} -h",
    )
    p.add_argument("--plant", choices=("tep", "synthetic"), default="tep",
                   help="tep: the real closed-loop model (needs tep-studio); synthetic: base case with noise")
    p.add_argument("--seed", type=int, default=1, help="measurement noise seed (default 1)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per wall second: 1 = real time, 0 = as fast as possible")
    p.add_argument("--idv", action="append", default=[], metavar="N[@START[-STOP]]",
                   help="disturbance schedule, repeatable: 6 (from the start), 6@8h, 1@30m-2h")
    p.add_argument("--warmup", default="0", metavar="DURATION",
                   help="run the plant undisturbed this long (e.g. 12h) before serving, and again after every "
                        "reset; simulated time and --idv count from its end. The TEP swings for ~10 h after a "
                        "reset: start-up, not normal operation (default 0)")
    p.add_argument("--host", default="127.0.0.1", help="interface every endpoint binds (default 127.0.0.1)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset of opcua,modbus,opcda")
    p.add_argument("--opcua-port", type=int, default=4840)
    p.add_argument("--opcua-security", choices=SECURITY_MODES, default="none",
                   help="Basic256Sha256 with a generated self-signed certificate: sign, encrypt (SignAndEncrypt), "
                        "secure (both, no unsecured endpoint) or all (both plus None)")
    p.add_argument("--opcua-cert-dir", type=Path, default=Path(".sim-certs"),
                   help="where the server certificate is generated (once) when --opcua-security is not none")
    p.add_argument("--opcua-trust-dir", type=Path, default=None,
                   help="folder of trusted client certificates (DER/PEM); others are refused with "
                        "BadCertificateUntrusted and saved in <cert-dir>/rejected (default: accept any)")
    p.add_argument("--opcua-history-s", type=float, default=3600.0, metavar="SECONDS",
                   help="OPC UA history: every process tag keeps its value changes this long, for HistoryRead "
                        "(HistoryReadRawModified, continuation points); 0 historizes nothing (default 3600)")
    p.add_argument("--opcua-history-values", type=int, default=36_000, metavar="N",
                   help="OPC UA history: at most N values per tag whatever their age, 20 bytes each: at fast "
                        "--speed this bound, not --opcua-history-s, decides how far back history goes "
                        "(default 36000: 38 MB for the 53 tags)")
    p.add_argument("--modbus-port", type=int, default=5020)
    p.add_argument("--modbus-unit", type=int, default=1)
    p.add_argument("--modbus-order", choices=("ABCD", "CDAB", "BADC", "DCBA"), default="ABCD")
    p.add_argument("--modbus-unit2", type=int, default=2, help="second unit id: same plant, other order")
    p.add_argument("--modbus-order2", choices=("ABCD", "CDAB", "BADC", "DCBA"), default="CDAB")
    p.add_argument("--opcda-port", type=int, default=7766)
    p.add_argument("--opcda-advertise-host", default=None, help="host put in proxies when --host is 0.0.0.0")
    p.add_argument("--opcda-tls-cert", type=Path, default=None, help="PEM certificate: enables Pyro TLS")
    p.add_argument("--opcda-tls-key", type=Path, default=None)
    p.add_argument("--opcda-tls-ca", type=Path, default=None, help="CA bundle: require client certificates")
    p.add_argument("--opcda-tls-dir", type=Path, default=None,
                   help="generate a CA, server and client certificates here (once) and serve mutual TLS")
    p.add_argument("--opcda-hmac-key-file", type=Path, default=None,
                   help="file holding a Pyro HMAC key (its text, stripped): every message must be signed with it, "
                        "as an OpenOPC gateway service configured with a key does")
    p.add_argument("--opcda-time-format", choices=("modern", "legacy"), default="modern",
                   help="timestamp text: modern pywin32 '2024-05-01 10:00:00.123000+00:00' or legacy "
                        "'05/01/24 10:00:00' (UTC)")
    p.add_argument("--opcda-report-host", default=None,
                   help="host put in client proxies whatever --host is; 0.0.0.0 acts like a gateway bound to all "
                        "interfaces (clients must rewrite it)")
    p.add_argument("--status-every", type=float, default=5.0, help="wall seconds between status lines (0: none)")
    p.add_argument("--in-process", action="store_true",
                   help="step the plant in the endpoints' process instead of its own (one process; under client "
                        "load the clock and the endpoints then compete for one interpreter)")
    p.add_argument("--log-level", default="WARNING")
    return p


_CONTROL_EXAMPLES = """examples:
  python -m simulator status                     # t, seed, disturbances, trip state, key process values
  python -m simulator status --json
  python -m simulator idv 6 on --opcua opc.tcp://127.0.0.1:4840/
  python -m simulator clear
  python -m simulator reset --seed 3
  gatewayctl sim status                          # the same through gatewayctl

exit codes: 0 done, 1 the simulator refused or is unreachable, 2 bad usage (e.g. an unknown disturbance)
"""


def _control_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulator", description="Control a running simulator.",
                                epilog=_CONTROL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opcua", default=control.DEFAULT_URL, help=f"its OPC UA endpoint (default {control.DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "idv": "switch a disturbance: idv 6 on",
        "clear": "switch every disturbance off",
        "reset": "restart from the base case (clears a trip)",
        "status": "simulated time, seed, disturbances, trip state and key process values",
    }
    children = {name: sub.add_parser(name, help=text, description=text, epilog=_CONTROL_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
                for name, text in helps.items()}
    children["idv"].add_argument("number", type=int, help=f"disturbance number, {IDV_NUMBERS[0]}-{IDV_NUMBERS[-1]}")
    children["idv"].add_argument("state", choices=("on", "off"))
    children["reset"].add_argument("--seed", type=int, default=None, help="new seed (default: keep)")
    for child in sub.choices.values():  # accept the options after the subcommand too
        child.add_argument("--opcua", default=argparse.SUPPRESS)
        child.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return p


def _check_endpoints(spec: str) -> list[str]:
    wanted = [e.strip() for e in spec.split(",") if e.strip()]
    unknown = sorted(set(wanted) - set(ENDPOINTS))
    if unknown or not wanted:
        raise ValueError(f"--endpoints {spec!r}: use a comma-separated subset of {','.join(ENDPOINTS)}")
    return wanted


def build_endpoints(args: argparse.Namespace, sim: SimulationView) -> list[Endpoint]:
    """The endpoints ``--endpoints`` asks for; imported lazily so each works without the others' libraries."""
    wanted = _check_endpoints(args.endpoints)
    endpoints: list[Endpoint] = []
    if "opcua" in wanted:
        from simulator.opcua_server import OpcUaConfig, OpcUaEndpoint

        endpoints.append(OpcUaEndpoint(sim, OpcUaConfig(args.host, args.opcua_port, args.opcua_security,
                                                        args.opcua_cert_dir, args.opcua_trust_dir,
                                                        args.opcua_history_s, args.opcua_history_values)))
    if "modbus" in wanted:
        from simulator.modbus_server import ModbusConfig, ModbusEndpoint

        endpoints.append(ModbusEndpoint(sim, ModbusConfig(args.host, args.modbus_port, args.modbus_unit,
                                                          args.modbus_order, args.modbus_unit2, args.modbus_order2)))
    if "opcda" in wanted:
        from simulator.opcda_server import OpcDaConfig, OpcDaEndpoint

        # OpcDaEndpoint is typed for the in-process Simulation but uses only what SimulationView offers.
        endpoints.append(OpcDaEndpoint(cast(Simulation, sim), OpcDaConfig(
            args.host, args.opcda_port, args.opcda_advertise_host, args.opcda_tls_cert, args.opcda_tls_key,
            args.opcda_tls_ca, args.opcda_time_format, args.opcda_report_host, args.opcda_tls_dir,
            args.opcda_hmac_key_file)))
    return endpoints


def _serve(argv: list[str]) -> int:
    parser = _serve_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        schedule = parse_idv_schedule(args.idv)
        warmup_s = parse_duration(args.warmup)
        if args.speed < 0:
            raise ValueError(f"--speed {args.speed}: must be >= 0 (0 = as fast as possible)")
        _check_endpoints(args.endpoints)
        if args.opcua_history_s < 0 or args.opcua_history_values < 1:
            raise ValueError(f"--opcua-history-s {args.opcua_history_s:g} must be >= 0 (0: no history) and "
                             f"--opcua-history-values {args.opcua_history_values} >= 1")
        config = AppConfig(args.plant, args.seed, args.speed, schedule, args.status_every,
                           plant_process=not args.in_process, warmup_s=warmup_s)
        sim = build_simulation(config)
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    try:
        config.endpoints = build_endpoints(args, sim)
        asyncio.run(serve_forever(config, sim))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # typically a port in use
        print(f"error: {exc}; pick another port (--opcua-port/--modbus-port/--opcda-port)", file=sys.stderr)
        return 1
    finally:
        if isinstance(sim, RemoteSimulation):
            sim.close()
    return 0


def _control(argv: list[str]) -> int:
    parser = _control_parser()
    args = parser.parse_args(argv)
    url = args.opcua
    result: dict[str, object] = {"command": args.command}
    try:
        if args.command == "idv":
            try:
                check_idv(args.number)
            except ValueError as exc:
                parser.error(str(exc))
            asyncio.run(control.set_idv(url, args.number, args.state == "on"))
            result.update(idv=args.number, on=args.state == "on")
            text = f"IDV {args.number} {args.state}"
        elif args.command == "clear":
            asyncio.run(control.clear_idvs(url))
            text = "all disturbances off"
        elif args.command == "reset":
            asyncio.run(control.reset(url, args.seed))
            result.update(seed=args.seed)
            text = "plant reset"
        else:
            status = asyncio.run(control.status(url))
            result.update(status.as_json())
            text = status.line()
    except control.ControlError as exc:
        if args.json:
            print(json.dumps({**result, "ok": False, "error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**result, "ok": True}) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m simulator`` and ``gatewayctl sim``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in CONTROL_COMMANDS for a in args):  # no serve option takes these words as a value
        return _control(args)
    return _serve(args)
