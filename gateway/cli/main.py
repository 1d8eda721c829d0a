"""gatewayctl: the on-site troubleshooting CLI.

Exit codes: 0 ok, 1 the thing checked is unhealthy or failed, 2 bad usage or configuration.

Examples:
  gatewayctl streams --store /var/lib/factoryedge/data
  gatewayctl tail factoryedge-opcua --tag 'Reactor/*' --follow
  gatewayctl status
  gatewayctl config check publisher.yaml --component factoryedge.Publisher
  gatewayctl config defaults factoryedge.OpcUaCollector
  gatewayctl sim --speed 10
  gatewayctl anomaly fit --config groups.yaml --data normal.csv --model model/
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.componentconfig import COMPONENTS
from gateway.config import load_file
from gateway.destinations.base import record_json
from gateway.errors import ConfigError, GatewayError
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def _store(args: argparse.Namespace) -> EmbeddedStore:
    return EmbeddedStore(args.store)


def cmd_streams(args: argparse.Namespace) -> int:
    store = _store(args)
    rows: list[dict[str, Any]] = []
    for name in store.list_streams():
        info = store.describe(name)
        rows.append({"stream": name, "messages": info.message_count, "oldest_seq": info.oldest_seq,
                     "next_seq": info.next_seq, "bytes": info.total_bytes, "max_bytes": info.spec.max_size_bytes,
                     "dropped": info.dropped_messages, "rejected": info.rejected_appends})
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'stream':28}{'messages':>10}{'bytes':>14}{'full %':>8}{'dropped':>9}{'rejected':>9}")
        for r in rows:
            full = 100 * r["bytes"] / r["max_bytes"]
            print(f"{r['stream']:28}{r['messages']:>10}{r['bytes']:>14}{full:>8.1f}{r['dropped']:>9}{r['rejected']:>9}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    store = _store(args)
    start = max(0, store.describe(args.stream).next_seq - args.messages)
    reader = RecordReader(store, args.stream, "gatewayctl-tail", PositionStore(Path(args.store) / ".tail"))
    reader.position = start  # never committed: tail leaves no position behind
    while True:
        batch = reader.poll(max_messages=1000, timeout_s=1.0 if args.follow else 0)
        for r in batch.records:
            if args.tag and not fnmatch.fnmatch(r.tag, args.tag):
                continue
            rec = record_json(r)
            print(json.dumps(rec) if args.json else
                  f"{rec['sourceTs']}  {r.source:14} {r.tag:40} {r.value!s:>14} {r.quality.name:9} {rec['kind']}")
        sys.stdout.flush()
        if not args.follow and not batch.messages:
            return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    folder = Path(args.store) / "status"
    statuses = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []
    if args.json:
        print(json.dumps(statuses))
        return EXIT_OK if statuses else EXIT_UNHEALTHY
    if not statuses:
        print(f"no component status in {folder}: is the gateway running with store path {args.store}?")
        return EXIT_UNHEALTHY
    now = time.time_ns()
    for s in statuses:
        age = (now - s["updated_ns"]) / 1e9
        print(f"{s['component']}  pid {s['pid']}  updated {age:.1f} s ago{'  (STALE)' if age > 30 else ''}")
        for name, c in s.get("connections", {}).items():
            last = (now - c["last_good_read_ns"]) / 1e9 if c["last_good_read_ns"] else float("inf")
            print(f"  in  {name:22} connected={c['connected']!s:5} written={c['values_written']:<9} "
                  f"last good {last:.1f} s ago  errors={c['read_errors']} {c['last_error'][:50]}")
        for name, d in s.get("destinations", {}).items():
            print(f"  out {name:22} sent={d['records_sent']:<9} backlog={d['backlog_messages']:<6} "
                  f"oldest unsent {d['oldest_unsent_age_s']:.1f} s  retries={d['retries']} "
                  f"dead-lettered={d['dead_lettered']} {d['last_error'][:50]}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        load_file(COMPONENTS[args.component], args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: valid {args.component} configuration")
    return EXIT_OK


def cmd_config_defaults(args: argparse.Namespace) -> int:
    model = COMPONENTS[args.component]
    data: Any = json.loads(model().model_dump_json())
    print(json.dumps(data, indent=1) if args.json else yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_sim(args: argparse.Namespace) -> int:
    from simulator.cli import main as sim_main

    return int(sim_main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="data", help="embedded store folder (the components' store.path)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("streams", help="list streams with depth, size and drops").set_defaults(fn=cmd_streams)
    tail = sub.add_parser("tail", help="show decoded records of a stream")
    tail.add_argument("stream")
    tail.add_argument("--tag", help="tag pattern, e.g. 'Reactor/*'")
    tail.add_argument("-n", "--messages", type=int, default=10, help="start this many messages from the end")
    tail.add_argument("-f", "--follow", action="store_true")
    tail.set_defaults(fn=cmd_tail)
    sub.add_parser("status", help="one screen of the live pipeline").set_defaults(fn=cmd_status)
    config = sub.add_parser("config", help="check configurations, show defaults").add_subparsers(required=True)
    check = config.add_parser("check", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.add_argument("--component", choices=sorted(COMPONENTS), required=True)
    check.set_defaults(fn=cmd_config_check)
    defaults = config.add_parser("defaults", help="print a component's default configuration")
    defaults.add_argument("component", choices=sorted(COMPONENTS))
    defaults.set_defaults(fn=cmd_config_defaults)
    sim = sub.add_parser("sim", help="run or control the TEP simulator (see `gatewayctl sim -- --help`)",
                         add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(fn=cmd_sim)
    try:
        from gateway.anomaly.cli import register
    except ImportError:  # pragma: no cover - anomaly extra missing
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "fn", None) or args.func  # the anomaly subcommands register `func`
        return int(handler(args))
    except GatewayError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
