"""gatewayctl: the on-site troubleshooting CLI. Is it running, is data coming in, is it going out, and if not, why.

Exit codes: 0 ok, 1 the thing checked is unhealthy or failed, 2 bad usage or configuration.

Examples:
  gatewayctl doctor                               every check in order, each with its fix
  gatewayctl --config collector.yaml --config publisher.yaml doctor
  gatewayctl status --watch                       live pipeline, refreshed like top (q quits)
  gatewayctl streams --store /var/lib/factoryedge/data
  gatewayctl tail factoryedge-opcua --tag 'Reactor/*' --follow
  gatewayctl buffer                               backlog per destination and stream
  gatewayctl replay factoryedge-opcua --from now-2h --to now-1h --destination cloud
  gatewayctl config check publisher.yaml
  gatewayctl config explain factoryedge.Publisher destinations.mqtt.port
  gatewayctl sim --speed 10
  gatewayctl anomaly fit --config groups.yaml --data normal.csv --model model/

Common options (--store, --json, --config, --config-dir, --deployed) go before or after the command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2

# One line per command group: (its command names, the module whose `register(subparsers)` adds them). A module is
# imported only when one of its commands runs (all of them for --help), so gatewayctl starts fast.
COMMANDS: list[tuple[tuple[str, ...], str]] = [
    (("doctor",), "gateway.cli.doctor"),
    (("status",), "gateway.cli.status"),
    (("streams", "tail", "buffer"), "gateway.cli.streamscmd"),
    (("replay",), "gateway.cli.replay"),
    (("config",), "gateway.cli.configcmd"),
    (("sim",), "gateway.cli.simcmd"),
    (("modbus",), "gateway.cli.modbus"),
    (("opcua",), "gateway.cli.opcua"),
    (("opcda",), "gateway.cli.opcda"),
    (("anomaly",), "gateway.anomaly.cli"),
    (("dev",), "devkit.cli"),
]

# Options every command understands, wherever they are written; (flags, keyword arguments).
_COMMON: list[tuple[tuple[str, ...], dict[str, object]]] = [
    (("--store",), {"metavar": "DIR", "help": "embedded store folder (the components' store.path); default: from "
                    "the configuration, else ./data"}),
    (("--json",), {"action": "store_true", "help": "machine-readable output"}),
    (("--config",), {"action": "append", "metavar": "[COMPONENT=]FILE", "dest": "config_files",
                     "help": "a component's configuration file (repeat for each component); the component is "
                     "recognised from the file name or content, or given as COMPONENT=FILE"}),
    (("--config-dir",), {"metavar": "DIR", "help": "every *.yaml, *.yml and *.json in DIR is a configuration file"}),
    (("--deployed",), {"action": "store_true", "help": "read configurations from the Greengrass deployment (IPC)"}),
    (("--stream-manager",), {"metavar": "HOST:PORT", "help": "read streams from stream manager instead of the "
                             "embedded store"}),
    (("--greengrass-root",), {"metavar": "DIR", "default": "/greengrass/v2",
                              "help": "Greengrass root, for greengrass-cli and components' work folders"}),
]
_VALUE_OPTIONS = {f for flags, kw in _COMMON if kw.get("action") != "store_true" for f in flags}


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # a command may name the common options it uses (set_defaults(common_options=...)); the others do nothing there
    offered = parser.get_default("common_options")
    for flags, kw in _COMMON:
        if any(f in parser._option_string_actions for f in flags):  # the command has its own meaning for it
            continue
        if offered is not None and not set(flags) & set(offered):
            continue
        options = dict(kw)
        if not top:  # absent after the command: keep what was given before it
            options["default"] = argparse.SUPPRESS
        parser.add_argument(*flags, **options)  # type: ignore[arg-type]


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (argparse keeps them in its private subparsers action)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subparsers(child)]
    return found


def _wanted(argv: Sequence[str]) -> list[str]:
    """The modules to load: the one owning the command in ``argv``, or all (help, typos)."""
    names = {n: module for group, module in COMMANDS for n in group}
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return [names[token]] if token in names else [m for _, m in COMMANDS]
    return [m for _, m in COMMANDS]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(_wanted(argv)):
        try:
            register = importlib.import_module(module).register
        except ImportError as exc:  # an optional extra (e.g. anomaly) is not installed: its commands are absent
            if module.startswith("gateway.cli.") and getattr(exc, "name", None) != module:
                raise
            if "-h" in argv or "--help" in argv:
                print(f"gatewayctl: {module} unavailable ({exc})", file=sys.stderr)
            continue
        register(sub)
    for child in _subparsers(parser):
        if child.add_help:  # parsers without help pass their arguments through (sim)
            _add_common(child, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    from gateway.errors import ConfigError, GatewayError
    from gateway.redact import redact_text

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gatewayctl: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"gatewayctl: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `gatewayctl tail ... | head`
        return EXIT_OK


def entry() -> int:
    """The installed ``gatewayctl`` command: what it writes (trusted certificates, models, keys) is private."""
    os.umask(0o077)
    return main()


if __name__ == "__main__":
    sys.exit(entry())
