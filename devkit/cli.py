"""``gatewayctl dev``: run the built Greengrass components locally as a nucleus would, and deploy changes to them.

Examples:
  python3 tools/gg_build.py && gatewayctl dev run
  gatewayctl dev run --config overrides.yaml --mqtt 127.0.0.1:1883
  gatewayctl dev run --component factoryedge.OpcUaCollector --component factoryedge.Publisher --iot-file iot.jsonl
  gatewayctl dev status
  gatewayctl dev config factoryedge.Publisher change.yaml        validated by the component, then applied
  gatewayctl dev config factoryedge.Publisher --reset /destinations
  gatewayctl dev stop

Exit codes: 0 ok (a configuration applied), 1 a component BROKEN or a configuration rejected, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import yaml

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_ROOT = Path(".run/devrun")


def register(subparsers: Any) -> None:
    """Add the ``dev`` command group to ``gatewayctl``."""
    parser = subparsers.add_parser("dev", help="run built Greengrass components locally; deploy config changes",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dev_command", required=True)

    run = sub.add_parser("run", help="run greengrass-build/ as a nucleus would (until Ctrl-C)")
    run.add_argument("--build", type=Path, default=Path("greengrass-build"), help="build folder (recipes/, artifacts/)")
    _root(run)
    run.add_argument("--config", type=Path, help="configuration overrides: {Component: {key: value}} or a deployment "
                     "document's components (configurationUpdate merge/reset)")
    run.add_argument("--thing-name", help="{iot:thingName} and AWS_IOT_THING_NAME (default devrun-<hostname>)")
    target = run.add_mutually_exclusive_group()
    target.add_argument("--mqtt", metavar="HOST:PORT", help="forward PublishToIoTCore to this MQTT broker")
    target.add_argument("--iot-file", type=Path, help="append PublishToIoTCore messages to this JSON-lines file "
                        "(default <root>/iot-core.jsonl)")
    run.add_argument("--component", action="append", default=[], help="run only this component (repeatable)")
    run.add_argument("--stream-manager-port", type=int, default=8088, help="0 picks a free port (default 8088)")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=_run)

    config = sub.add_parser("config", help="deploy a configuration change to a running dev run")
    config.add_argument("component")
    config.add_argument("file", type=Path, nargs="?", help="YAML/JSON mapping merged into the configuration")
    config.add_argument("--reset", action="append", default=[], metavar="POINTER",
                        help="JSON pointer to reset to the recipe default first ('' resets all); repeatable")
    _root(config)
    config.set_defaults(func=_config)

    status = sub.add_parser("status", help="components of the running dev run")
    _root(status)
    status.set_defaults(func=_status)
    stop = sub.add_parser("stop", help="stop the running dev run")
    _root(stop)
    stop.set_defaults(func=_stop)


def _root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"dev run folder (default {DEFAULT_ROOT})")


def _run(args: argparse.Namespace) -> int:
    from devkit.devrun import DevRun, Options

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(build=args.build, root=args.root, config=args.config, mqtt=args.mqtt, iot_file=args.iot_file,
                      components=args.component, stream_manager_port=args.stream_manager_port)
    if args.thing_name:
        options.thing_name = args.thing_name
    return asyncio.run(DevRun(options).run())


def _config(args: argparse.Namespace) -> int:
    from devkit.devrun_control import request
    from gateway.errors import ConfigError

    merge: Any = {}
    if args.file is not None:
        try:
            merge = yaml.safe_load(args.file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{args.file}: cannot read ({exc})", fix="pass a YAML or JSON mapping") from exc
    if not isinstance(merge, dict) or (not merge and not args.reset):
        raise ConfigError(f"{args.file}: nothing to deploy", fix="pass a non-empty mapping and/or --reset POINTER")
    answer = request(args.root, {"op": "config", "component": args.component, "merge": merge, "reset": args.reset})
    if getattr(args, "json", False):
        print(json.dumps(answer))
    elif "error" in answer:
        print(f"gatewayctl dev config: {answer['error']}")
    else:
        print(f"{args.component}: {'applied' if answer['applied'] else 'REJECTED'}"
              f"{': ' + answer['message'] if answer.get('message') else ''}")
    return EXIT_OK if answer.get("applied") else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from devkit.devrun_control import request

    answer = request(args.root, {"op": "status"}, timeout_s=10)
    if getattr(args, "json", False):
        print(json.dumps(answer))
    else:
        print(f"dev run {answer['root']}  thing {answer['thing_name']}  stream manager :{answer['stream_manager_port']}"
              f"  IoT Core -> {answer['iot_core']} ({answer['iot_core_published']} published)")
        print(f"{'component':32}{'state':12}{'reported':10}{'pid':>8}{'restarts':>10}")
        for name, c in answer["components"].items():
            print(f"{name:32}{c['state']:12}{c['reported_state'] or '-':10}{c['pid'] or '-':>8}{c['restarts']:>10}")
    broken = any(c["state"] in ("BROKEN", "ERRORED") for c in answer["components"].values())
    return EXIT_FAILED if broken else EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    from devkit.devrun_control import request

    answer = request(args.root, {"op": "stop"}, timeout_s=10)
    print(json.dumps(answer) if getattr(args, "json", False) else "stopping")
    return EXIT_OK
