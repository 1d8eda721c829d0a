"""``gatewayctl doctor``: every check in order, each a verdict with its fix.

1. configuration valid; 2. components running; 3. store reachable, sizes, full streams, free disk; 4. each source
connection (its module's ``diagnose`` or a TCP check, then the collector's counters); 5. each destination (same, then
the publisher's counters: last success, backlog, oldest unsent); 6. clock skew (``--ntp``, and source vs gateway
timestamps of recent records). Exit code 1 when any check failed, 2 when the arguments are wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway.cli import checks, configs
from gateway.cli.common import EXIT_OK, EXIT_UNHEALTHY, age_s, fmt_age, fmt_bytes, pid_alive, print_json, store_dir
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import ConfigError, GatewayError

Section = tuple[str, list[Finding]]
MARK = {True: "✔", False: "✘", None: "!"}
FULL_RATIO = 0.95


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="check everything in order and say how to fix what is wrong",
        description="Examples:\n  gatewayctl doctor\n  gatewayctl --config collector.yaml --config publisher.yaml "
        "doctor\n  gatewayctl doctor --deployed --ntp pool.ntp.org --json\n"
        "Without --config, the configurations the running components were started with are checked.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per peer check (default 5 s)")
    doctor.add_argument("--max-age", type=float, default=30.0, metavar="S",
                        help="data, statuses and backlogs older than this are failures (default 30 s)")
    doctor.add_argument("--ntp", metavar="HOST[:PORT]", help="compare the gateway clock with this NTP server")
    doctor.set_defaults(func=cmd_doctor)


def check_configs(loaded: list[configs.LoadedConfig]) -> list[Finding]:
    if not loaded:
        return [warning("configuration", "none given and none found from running components",
                        "pass --config FILE for each component (or --config-dir DIR, or --deployed)")]
    out = []
    for c in loaded:
        if c.ok:
            out.append(passed(c.component, f"{c.origin}: valid"))
        else:
            out.append(failed(c.component, f"{c.origin}: {len(c.problems)} problem(s): " + "; ".join(c.problems),
                              "correct the fields named (gatewayctl config explain COMPONENT KEY shows what each "
                              "wants), then restart or redeploy"))
    return out


def greengrass_states(root: Path, timeout_s: float) -> dict[str, str] | None:
    """Component name -> state from ``greengrass-cli component list``; None when the CLI is not usable here."""
    cli = root / "bin" / "greengrass-cli"
    exe = str(cli) if cli.exists() else shutil.which("greengrass-cli")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "component", "list"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_component_list(out.stdout) if out.returncode == 0 else None


def parse_component_list(text: str) -> dict[str, str]:
    states, name = {}, None
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Component Name":
            name = value.strip()
        elif key == "State" and name:
            states[name] = value.strip()
    return states


def check_components(args: argparse.Namespace, loaded: list[configs.LoadedConfig],
                     statuses: dict[str, dict[str, Any]], now_ns: int) -> list[Finding]:
    expected = list(dict.fromkeys([c.component for c in loaded] + sorted(statuses)))
    gg = greengrass_states(Path(args.greengrass_root), args.timeout)
    out = []
    if gg is not None:
        for name in [n for n in gg if n.startswith("factoryedge.")] or expected:
            state = gg.get(name, "not deployed")
            if state == "RUNNING":
                out.append(passed(name, "RUNNING"))
            elif state == "FINISHED" and name not in configs.components():  # the bundle and factoryedge.Cli: no
                out.append(passed(name, "FINISHED (installed; nothing runs)"))  # process, FINISHED is their health
            else:
                out.append(failed(name, f"state {state}", f"read /greengrass/v2/logs/{name}.log, then "
                                  f"greengrass-cli component restart --names {name}"))
        return out
    if not expected:
        return [failed("components", f"no component status in {store_dir(args) / 'status'}",
                       "start the components (python components/<name>/main.py --config FILE), or pass --store "
                       "with their store.path")]
    for name in expected:
        s = statuses.get(name)
        if s is None:
            out.append(failed(name, "not running: it never wrote a status to this store",
                              "start it with its configuration; check that its store.path is this store"))
            continue
        pid, age = int(s.get("pid") or 0), age_s(s.get("updated_ns"), now_ns) or 0.0
        if not pid_alive(pid):
            out.append(failed(name, f"stopped: pid {pid} is gone, last status {fmt_age(age)}",
                              "restart it; its log (or journalctl) says why it stopped"))
        elif age > args.max_age:
            out.append(failed(name, f"hung: pid {pid} alive but no status for {fmt_age(age)}",
                              f"restart it (kill {pid}); report its log if this repeats"))
        else:
            out.append(passed(name, f"running, pid {pid}, status {fmt_age(age)}"))
    return out


def _stream_manager_target(args: argparse.Namespace, loaded: list[configs.LoadedConfig]) -> str | None:
    if getattr(args, "stream_manager", None):
        return str(args.stream_manager)
    for c in loaded:
        store = getattr(c.config, "store", None)
        if store is not None and (store.kind == "stream_manager" or (store.kind == "auto" and
                                                                      configs.under_greengrass())):
            port = store.stream_manager_port or int(os.environ.get("STREAM_MANAGER_SERVER_PORT", "8088"))
            return f"{store.stream_manager_host}:{port}"
    return None


def check_store(args: argparse.Namespace, loaded: list[configs.LoadedConfig]) -> tuple[list[Finding], Any]:
    """Reachable, per-stream fill and loss, free disk. Returns the findings and the open store (or None)."""
    from gateway.cli.common import open_store
    from gateway.cli.streamscmd import backlog_rows, reader_positions, stream_rows

    target = _stream_manager_target(args, loaded)
    if target:
        args.stream_manager = target
    try:
        store = open_store(args, connect_timeout_s=min(args.timeout, 3.0))
        rows = stream_rows(store)
    except (GatewayError, OSError) as exc:
        where = f"stream manager at {target}" if target else f"embedded store at {store_dir(args)}"
        fix = ("check that aws.greengrass.StreamManager is RUNNING and its port (STREAM_MANAGER_SERVER_PORT)"
               if target else "pass --store with the components' store.path (or --config)")
        return [failed("store", f"{where} unreachable: {exc}", fix)], None
    folder = store_dir(args)
    positions = reader_positions(args, store)
    total = sum(r["bytes"] for r in rows)
    out = [passed("store", f"{'stream manager ' + target if target else folder}: {len(rows)} streams, "
                  f"{fmt_bytes(total)} stored")]
    lost_by_stream: dict[str, list[str]] = {}
    readers_by_stream: dict[str, list[dict[str, Any]]] = {}
    for b in backlog_rows(store, positions):
        readers_by_stream.setdefault(b["stream"], []).append(b)
        if b["lost"]:
            lost_by_stream.setdefault(b["stream"], []).append(f"{b['reader']} lost {b['lost']}")
    for r in rows:
        ratio = r["bytes"] / r["max_bytes"]
        name, lost = r["stream"], lost_by_stream.get(r["stream"])
        if r["strategy_on_full"] == "RejectNewData" and (ratio >= FULL_RATIO or r["rejected"]):
            ttl_s = store.describe(name).spec.ttl_s if target else None
            out.append(_full_stream(r, ratio, readers_by_stream.get(name, []), bool(target), ttl_s))
        elif lost:
            out.append(failed(f"stream {name}", f"unsent data was overwritten ({', '.join(lost)} messages); "
                              f"{fmt_bytes(r['bytes'])} of {fmt_bytes(r['max_bytes'])}",
                              "a destination was down longer than the stream holds: fix it (see below) and raise "
                              "the stream's max_size_bytes"))
        elif ratio >= FULL_RATIO and r["strategy_on_full"] == "RejectNewData":
            out.append(warning(f"stream {name}", f"{ratio:.0%} full"))
        else:
            out.append(passed(f"stream {name}", f"{r['messages']} messages, {ratio:.0%} of max"))
    if not target and folder.is_dir():
        usage = shutil.disk_usage(folder)
        room = sum(max(0, r["max_bytes"] - r["bytes"]) for r in rows)
        if usage.free < 50 * 1024 * 1024 or usage.free < usage.total * 0.01:
            out.append(failed("disk", f"{fmt_bytes(usage.free)} free on the store's disk",
                              "free disk space: the streams cannot buffer an outage"))
        elif usage.free < room:
            out.append(warning("disk", f"{fmt_bytes(usage.free)} free, but the streams may grow by {fmt_bytes(room)}",
                               "free space or lower the streams' max_size_bytes, so that a long outage hits the "
                               "streams' limits (counted) and not a full disk"))
        else:
            out.append(passed("disk", f"{fmt_bytes(usage.free)} free (streams may grow by {fmt_bytes(room)})"))
    return out, store


def _full_stream(r: dict[str, Any], ratio: float, readers: list[dict[str, Any]], stream_manager: bool,
                 ttl_s: float | None) -> Finding:
    """A RejectNewData stream that is full or refused appends: the fix for what holds it, not a guess.

    The embedded store frees, at the next append, what every reader committed (readers: the stream's position
    files); stream manager deletes nothing read, only what ``ttl_s`` expired (docs/publisher.md, buffering)."""
    name = f"stream {r['stream']}"
    size = f"{fmt_bytes(r['bytes'])} of {fmt_bytes(r['max_bytes'])}"
    refused = f"{r['rejected']} appends rejected" if r["rejected"] else "appends will be refused"
    committed = [b for b in readers if b["committed"] is not None]
    # stream manager frees by time alone, so every reader's backlog counts; the embedded store knows a reader only
    # by its position file
    behind = [f"{b['reader']} (backlog {b['backlog']})" for b in (readers if stream_manager else committed)
              if b["backlog"]]
    # configured destinations without a position file hold nothing in the embedded store (it knows no such reader)
    unstarted = [b["reader"] for b in readers if b["committed"] is None]
    if unstarted and committed and not stream_manager:
        behind_note = f"; {', '.join(unstarted)} never committed here and will find only what the others left"
    else:
        behind_note = ""
    frees = (f"stream manager deletes nothing that was read, only data older than ttl_s ({ttl_s:g} s), a segment "
             "at a time" if stream_manager and ttl_s else
             "stream manager deletes nothing that was read and this stream has no ttl_s: it stays full; recreate "
             "it with ttl_s set, or use OverwriteOldestData" if stream_manager else "")
    if ratio < FULL_RATIO:
        return warning(name, f"{ratio:.0%} full; {r['rejected']} appends were refused earlier (counted since the "
                       "stream was created)", f"get the readers going: {', '.join(behind)}" if behind else "")
    if behind:
        return failed(name, f"full: {size}, {refused}: new data is refused",
                      f"reader(s) {', '.join(behind)} are behind: get them going (see destinations below)"
                      + (f"; {frees}" if frees else "; the store frees what every reader has committed (a reader "
                         "that was removed leaves positions/READER/STREAM.pos behind: delete it)")
                      + behind_note
                      + "; or raise max_size_bytes to ride out longer outages")
    if stream_manager:
        return failed(name, f"full: {size}, {refused}; no reader is behind", frees
                      + ("; or lower ttl_s, or raise max_size_bytes" if ttl_s else ""))
    if not committed:
        return failed(name, f"full: {size}, {refused}: new data is refused",
                      "no reader has committed a position on this stream, and RejectNewData frees only what every "
                      "reader committed: start its readers (the publisher's destinations, the anomaly component), "
                      "or raise max_size_bytes, or use OverwriteOldestData")
    return warning(name, f"full: {size}, {refused} while the readers were behind; every reader has committed all "
                   "of it now, so the next append frees that space", "nothing to do for the readers; raise "
                   "max_size_bytes if outages last longer than the stream holds" + behind_note)


async def _peer_checks(args: argparse.Namespace, loaded: list[configs.LoadedConfig],
                       statuses: dict[str, dict[str, Any]], now_ns: int) -> list[Section]:
    jobs: list[tuple[str, Any, list[Finding]]] = []
    seen_sources: set[str] = set()
    seen_dests: set[str] = set()
    for c in (c for c in loaded if c.ok):
        status = statuses.get(c.component, {})
        stale = checks.staleness(status, args.max_age, now_ns)
        for conn in getattr(c.config, "connections", None) or []:
            if getattr(conn, "enabled", True):
                seen_sources.add(conn.name)
                counters = checks.source_counters(conn.name, status.get("connections", {}).get(conn.name),
                                                  args.max_age, now_ns, stale)
                jobs.append((f"source {conn.name} ({conn.type})", checks.probe(conn, args.timeout),
                             [counters]))
        for dest in getattr(c.config, "destinations", None) or []:
            if getattr(dest, "enabled", True):
                seen_dests.add(dest.name)
                counters_d = checks.destination_counters(dest.name, status.get("destinations", {}).get(dest.name),
                                                         args.max_age, now_ns, stale)
                jobs.append((f"destination {dest.name} ({dest.type})",
                             checks.probe(dest, args.timeout), counters_d))
    results = await asyncio.gather(*(j[1] for j in jobs))
    sections = [(title, [*found, *after]) for (title, _, after), found in zip(jobs, results, strict=True)]
    for s in statuses.values():  # what runs without a configuration we know: its counters still tell a lot
        stale = checks.staleness(s, args.max_age, now_ns)
        for name, c in (s.get("connections") or {}).items():
            if name not in seen_sources:
                sections.append((f"source {name}", [checks.source_counters(name, c, args.max_age, now_ns, stale)]))
        for name, d in (s.get("destinations") or {}).items():
            if name not in seen_dests:
                sections.append((f"destination {name}",
                                 checks.destination_counters(name, d, args.max_age, now_ns, stale)))
    return sections


def check_losses(args: argparse.Namespace) -> list[Finding]:
    """Loss counters nobody acknowledged yet: data that never reached a stream or a destination."""
    from gateway.cli.common import fmt_losses, unacknowledged_losses

    out = []
    for r in unacknowledged_losses(store_dir(args)):
        out.append(failed(f"losses {r['owner']} on {r['stream']}",
                          f"not acknowledged: {fmt_losses(r['unacknowledged'])}",
                          "find the cause (a destination down longer than the stream holds, a full stream, a stopped "
                          "collector; see the logs), then gatewayctl buffer --ack-losses"))
    return out


def check_anomaly(statuses: dict[str, dict[str, Any]]) -> list[Finding]:
    """The anomaly component's own problems and the groups in alarm (an alarm is news, not a gateway fault)."""
    s = statuses.get("factoryedge.AnomalyDetector")
    if s is None:
        return []
    out = []
    if s.get("problem"):
        out.append(warning("anomaly", str(s["problem"]), "add groups to the factoryedge.AnomalyDetector configuration"))
    for where, error in (s.get("errors") or {}).items():
        out.append(warning(f"anomaly {where}", str(error)[:200], "see the component's log"))
    for name, g in (s.get("groups") or {}).items():
        missing = g.get("missing_tags") or []
        if missing:
            out.append(warning(f"group {name}", f"tags never arrived: {', '.join(missing[:5])}",
                               "check the group's tag names against gatewayctl tail STREAM"))
        elif g.get("alarm"):
            out.append(warning(f"group {name}", f"in ALARM (score {g.get('score')} of threshold 1.0)"))
        else:
            out.append(passed(f"group {name}", f"{g.get('state')}, score {g.get('score')}"))
    return out


def check_clock(args: argparse.Namespace, loaded: list[configs.LoadedConfig], statuses: dict[str, dict[str, Any]],
                store: Any) -> list[Finding]:
    out = [checks.clock_vs_ntp(args.ntp, min(args.timeout, 3.0))] if args.ntp else []
    streams = [c.config.stream.name for c in loaded if c.ok and hasattr(c.config, "stream")]
    streams += [s["stream"] for s in statuses.values() if s.get("stream")]
    for stream in dict.fromkeys(streams):
        if store is not None:
            out += checks.source_skew(stream, checks.recent_records(store, stream))
    if not out:
        out.append(warning("clock", "nothing to compare: no recent source records and no --ntp server",
                           "pass --ntp HOST to compare the gateway clock with a time server"))
    return out


def run(args: argparse.Namespace) -> list[Section]:
    now = time.time_ns()
    try:
        loaded, statuses = configs.gather(args)
    except (ConfigError, GatewayError, OSError) as exc:
        from gateway.cli.common import read_statuses

        loaded, statuses = [], read_statuses(args)
        config_findings = [failed("configuration", str(exc), getattr(exc, "fix", "") or "check the arguments")]
    else:
        config_findings = check_configs(loaded)
    sections: list[Section] = [("configuration", config_findings),
                               ("components", check_components(args, loaded, statuses, now))]
    store_findings, store = check_store(args, loaded)
    sections.append(("store", store_findings))
    losses = check_losses(args)
    if losses:
        sections.append(("losses", losses))
    sections += asyncio.run(_peer_checks(args, loaded, statuses, now))
    anomaly = check_anomaly(statuses)
    if anomaly:
        sections.append(("anomaly", anomaly))
    try:
        sections.append(("clock", check_clock(args, loaded, statuses, store)))
    finally:
        if store is not None:
            store.close()
    return sections


def cmd_doctor(args: argparse.Namespace) -> int:
    sections = run(args)
    findings = [f for _, fs in sections for f in fs]
    bad = [f for f in findings if f.ok is False]
    if args.json:
        print_json({"ok": not bad, "checks": [{"section": s, **f.as_dict()} for s, fs in sections for f in fs]})
        return EXIT_UNHEALTHY if bad else EXIT_OK
    for title, fs in sections:
        print(title)
        for f in fs:
            print(f"  {MARK[f.ok]} {f.check}: {f.detail}")
    fixes = [f for f in findings if f.fix and f.ok is not True]
    if fixes:
        print("\nfixes:")
        for i, f in enumerate(fixes, 1):
            print(f"  {i}. {MARK[f.ok]} {f.check}: {f.fix}")
    warned = sum(f.ok is None for f in findings)
    print(f"\n{len(findings)} checks: {len(findings) - len(bad) - warned} ok, {warned} warnings, {len(bad)} failed")
    return EXIT_UNHEALTHY if bad else EXIT_OK
