"""``gatewayctl status [--watch]``: one screen of the live pipeline, from the components' status files and the store.

Per component: running or not (pid alive, status fresh). Per connection: values/s and last good read. Per stream:
depth and how full. Per destination: rate, backlog and oldest unsent age. Per anomaly group: score, threshold and
alarm. ``--watch`` redraws it like ``top`` on the terminal's alternate screen; q or Ctrl-C quits.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import sys
import time
from typing import Any

from gateway.cli.common import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    age_s,
    fmt_age,
    fmt_bytes,
    fmt_losses,
    open_store,
    pid_alive,
    print_json,
    read_statuses,
    safe,
    store_dir,
    unacknowledged_losses,
)
from gateway.cli.streamscmd import stream_rows
from gateway.counters import current_names

STALE_S = 30.0  # without its status_interval_s in the file, a status older than this is stale
STALE_INTERVALS = 3  # a status older than three of its component's intervals is stale: its counters are history


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status", help="one screen of the live pipeline (--watch refreshes it like top)",
        description="Examples:\n  gatewayctl status\n  gatewayctl status --watch --interval 1\n"
        "  gatewayctl --json status\nExit code 1 when no component is running or one stopped.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("-w", "--watch", action="store_true", help="refresh until q or Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh interval (default 2 s)")
    status.add_argument("--stale-after", type=float, default=STALE_S, metavar="S",
                        help="a status older than this is stale when its file does not say its interval (default "
                        f"{STALE_S:.0f} s; otherwise {STALE_INTERVALS} x its status_interval_s)")
    status.set_defaults(func=cmd_status)


def _rate(entry: dict[str, Any], key: str, counter: str, prev: dict[str, Any] | None, dt: float) -> float | None:
    if key in entry:
        return float(entry[key])
    if prev is not None and dt > 0 and counter in prev:
        return float(entry.get(counter, 0) - prev[counter]) / dt
    return None


def collect(args: argparse.Namespace, previous: dict[str, Any] | None = None, store: Any = None) -> dict[str, Any]:
    """Everything the screen shows, as data (the ``--json`` output)."""
    now = time.time_ns()
    statuses = read_statuses(args)
    out: dict[str, Any] = {"store": str(store_dir(args)), "time_ns": now, "components": [], "connections": [],
                           "streams": [], "destinations": [], "anomaly": []}
    prev_dt = (now - previous["time_ns"]) / 1e9 if previous else 0.0
    prev_conn = {(c["component"], c["name"]): c for c in (previous or {}).get("connections", [])}
    prev_dest = {d["name"]: d for d in (previous or {}).get("destinations", [])}
    for name, s in sorted(statuses.items()):
        age = age_s(s.get("updated_ns"), now)
        alive = pid_alive(int(s.get("pid") or 0))
        stale = not alive or age is None or age > stale_limit_s(s, args.stale_after)
        out["components"].append({"component": name, "pid": s.get("pid"), "alive": alive,
                                  "status_age_s": None if age is None else round(age, 3),
                                  "running": not stale, "stale": stale,
                                  "config_revision": s.get("config_revision"),
                                  "last_error": str(s.get("last_error") or "")})  # a supervised task's failure
        for conn, c in (s.get("connections") or {}).items():
            c = current_names(c)  # a status file of the previous version, upgraded in place, has the old names
            row = {"component": name, "name": conn, "connected": c.get("connected"),
                   "values_read": c.get("values_read", 0), "bad_values_read": c.get("bad_values_read", 0),
                   "last_good_read_age_s": age_s(c.get("last_good_read_ns"), now),
                   "read_errors": c.get("read_errors", 0), "last_error": c.get("last_error", ""),
                   "values_lost": c.get("values_lost", 0),  # lost at the server before the gateway read them
                   "notification_messages_lost": c.get("notification_messages_lost", 0),
                   "tags": c.get("tags") or {}}  # units and ranges by tag (META records), for --json
            row["values_per_s"] = _rate(c, "values_per_s", "values_read", prev_conn.get((name, conn)), prev_dt)
            row["stale"] = stale  # old counters of a component that stopped writing: no live rate to show
            if stale:
                row["values_per_s"] = None
            out["connections"].append(row)
        for dest, d in (s.get("destinations") or {}).items():
            d = current_names(d)
            row = {"name": dest, "records_sent": d.get("records_sent", 0),
                   "backlog_messages": d.get("backlog_messages", 0),
                   "oldest_unsent_age_s": d.get("oldest_unsent_age_s", 0.0),
                   "last_success_age_s": age_s(d.get("last_success_ns"), now), "send_retries": d.get("send_retries", 0),
                   "records_dead_lettered": d.get("records_dead_lettered", 0), "last_error": d.get("last_error", "")}
            row["records_per_s"] = _rate(d, "records_per_s", "records_sent", prev_dest.get(dest), prev_dt)
            row["stale"] = stale
            if stale:
                row["records_per_s"] = None
            out["destinations"].append(row)
        groups = s.get("groups") or {}
        items = groups.items() if isinstance(groups, dict) else ((g.get("name", "?"), g) for g in groups)
        for group, g in items:
            state = g.get("state")
            if state == "learning" and g.get("learning_share") is not None:
                state = f"learning {float(g['learning_share']):.0%}"
            out["anomaly"].append({"group": group, "state": state, "score": g.get("score"),
                                   "threshold": g.get("threshold"), "alarm": bool(g.get("alarm"))})
    out["losses"] = unacknowledged_losses(store_dir(args))
    try:
        own = store is None
        store = store or open_store(args)
        out["streams"] = stream_rows(store)
        if own:
            store.close()
    except Exception as exc:  # noqa: BLE001 - an unreachable store is one line of the screen, not a crash
        out["store_error"] = str(exc)
    return out


_COLUMN, _FULL_ERROR = 60, 400


def _cut(text: str) -> str:
    return text if len(text) <= _COLUMN else text[: _COLUMN - 1] + "…"


def stale_limit_s(status: dict[str, Any], default_s: float) -> float:
    """Age past which a component's status is stale: three of its status intervals, when the file says them."""
    interval = status.get("status_interval_s")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
        return STALE_INTERVALS * float(interval)
    return default_s


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(data: dict[str, Any]) -> list[str]:
    clock = time.strftime("%H:%M:%S", time.localtime(data["time_ns"] / 1e9))
    lines = [f"gatewayctl status   store {data['store']}   {clock}"]
    if not data["components"]:
        lines.append(f"no component status in {data['store']}/status: is the gateway running with this store path?")
    for c in data["components"]:
        state = "running" if c["running"] else ("STOPPED (pid gone)" if not c["alive"] else "STALE status")
        lines.append(f"  {c['component']:32} pid {c['pid']!s:>7}  {state:18} status {fmt_age(c['status_age_s'])}")
        if c.get("last_error"):
            lines.append(f"    last error: {c['last_error'][:_FULL_ERROR]}")
    lines += ["", f"{'CONNECTION':24}{'conn':>5}{'values/s':>10}{'last good read':>16}{'bad':>8}{'lost':>10}"
              f"{'errors':>8}  last error"]
    for c in data["connections"]:
        conn = "STALE" if c.get("stale") else "yes" if c["connected"] else "NO"
        lines.append(f"{c['name'][:23]:24}{conn:>5}{_num(c['values_per_s']):>10}"
                     f"{fmt_age(c['last_good_read_age_s']):>16}{c['bad_values_read']:>8}{_lost(c):>10}"
                     f"{c['read_errors']:>8}  "
                     f"{c['last_error'][:60] if not c['connected'] or c['bad_values_read'] else ''}")
    lines += ["", f"{'STREAM':28}{'messages':>10}{'size':>12}{'full %':>8}{'dropped':>9}{'rejected':>9}"]
    if "store_error" in data:
        lines.append(f"  store unreachable: {data['store_error'][:100]}")
    for s in data["streams"]:
        lines.append(f"{s['stream'][:27]:28}{s['messages']:>10}{fmt_bytes(s['bytes']):>12}{s['full_pct']:>8.1f}"
                     f"{s['dropped']:>9}{s['rejected']:>9}")
    lines += ["", f"{'DESTINATION':24}{'rec/s':>9}{'backlog':>9}{'oldest unsent':>15}{'last success':>15}  last error"]
    for d in data["destinations"]:
        lines.append(f"{d['name'][:23]:24}{_num(d['records_per_s']):>9}{d['backlog_messages']:>9}"
                     f"{_num(d['oldest_unsent_age_s'], '{:.1f} s'):>15}{fmt_age(d['last_success_age_s']):>15}  "
                     f"{_cut(d['last_error'])}")
        if len(d["last_error"]) > _COLUMN:  # the fix is at the end of the message: show it whole below
            lines.append(f"    {d['last_error'][:_FULL_ERROR]}")
    if data.get("losses"):
        lines += ["", "UNACKNOWLEDGED LOSSES (gatewayctl buffer --ack-losses once dealt with)"]
        for r in data["losses"]:
            lines.append(f"  {r['owner'][:31]:32}{r['stream'][:27]:28}{fmt_losses(r['unacknowledged'])}")
    if data["anomaly"]:
        lines += ["", f"{'ANOMALY GROUP':24}{'state':>14}{'score':>10}{'raw score of threshold':>24}  alarm"]
        for g in data["anomaly"]:
            thr = g["threshold"] if isinstance(g["threshold"], int | float) and g["threshold"] > 0 else None
            forest = None if g["score"] is None or thr is None else g["score"] * thr
            raw = "-" if thr is None else f"{_num(forest, '{:.3g}')} of {thr:.3g}"
            lines.append(f"{g['group'][:23]:24}{g['state'] or '-':>14}{_num(g['score'], '{:.3g}'):>10}"
                         f"{raw:>24}  {'ALARM' if g['alarm'] else '-'}")
        # the status file has the score divided by the threshold and the raw threshold: never side by side
        lines.append("  (score: forest score / the group's threshold, 1.0 is the alarm line; raw: both in forest-score "
                     "units)")
    # names, errors and states come from status files that quote devices and servers: escape every line
    return [safe(line) for line in lines]


def _lost(c: dict[str, Any]) -> str:
    """Values the server lost before the connection read them, and missing notification messages ("3+2msg")."""
    values, messages = c.get("values_lost", 0), c.get("notification_messages_lost", 0)
    return f"{values}+{messages}msg" if messages else str(values)


def _healthy(data: dict[str, Any]) -> bool:
    return bool(data["components"]) and all(c["running"] for c in data["components"])


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return watch(args)
    data = collect(args)
    if args.json:
        print_json(data)
    else:
        print("\n".join(render(data)))
    return EXIT_OK if _healthy(data) else EXIT_UNHEALTHY


def watch(args: argparse.Namespace) -> int:
    """Redraw every ``--interval`` seconds on the alternate screen until q, Ctrl-C or end of input."""
    fd = sys.stdin.fileno()
    interactive = os.isatty(fd)
    saved = None
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still raises KeyboardInterrupt
    out = sys.stdout
    out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden: the shell's screen comes back after
    previous: dict[str, Any] | None = None
    try:
        while True:
            data = collect(args, previous)
            previous = data
            size = shutil.get_terminal_size()
            lines = [*render(data)[: size.lines - 3], "", "q quits"]
            out.write("\x1b[H" + "".join(line[: size.columns] + "\x1b[K\n" for line in lines) + "\x1b[J")
            out.flush()
            if _wait_for_quit(fd if interactive else None, args.interval):
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd: int | None, seconds: float) -> bool:
    """Wait up to ``seconds``; True when q was pressed (or input ended)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(left)  # no keyboard: the interval is the only event
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            key = os.read(fd, 32)
            if not key or b"q" in key.lower():
                return True
    return False
