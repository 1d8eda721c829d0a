"""``gatewayctl anomaly status``: the running component's status file as a table (or JSON).

The file is ``<store>/status/factoryedge.AnomalyDetector.json`` (shape in :mod:`gateway.anomaly.component`); under
Greengrass the component's work folder ``<greengrass root>/work/factoryedge.AnomalyDetector/*/status/`` is read too
and the newest file wins. Unhealthy (exit 1): no status file, a status older than ``STALE_S``, no group configured,
a group with member tags that never arrived, or a stream or save error. Alarms are the plant's state, not the
gateway's: they do not change the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.counters import current_names

COMPONENT = "factoryedge.AnomalyDetector"
STALE_S = 30.0


def find_status(args: argparse.Namespace) -> dict[str, Any] | None:
    """The newest status file of the component, or None."""
    name = f"{COMPONENT}.json"
    candidates = [Path(getattr(args, "store", None) or "data") / "status" / name]
    work = Path(getattr(args, "greengrass_root", None) or "/greengrass/v2") / "work" / COMPONENT
    if work.is_dir():
        candidates += sorted(work.glob(f"*/status/{name}"))
    best: dict[str, Any] | None = None
    for path in candidates:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (best is None or data.get("updated_ns", 0) > best.get("updated_ns", 0)):
            data["_path"] = str(path)
            best = data
    return best


def problems(status: dict[str, Any], now_ns: int) -> list[str]:
    """What makes the component unhealthy, one line each."""
    out = []
    age = (now_ns - int(status.get("updated_ns", 0))) / 1e9
    interval = status.get("status_interval_s")
    limit = 3 * float(interval) if isinstance(interval, int | float) and interval > 0 else STALE_S
    if age > limit:
        out.append(f"STALE: status is {age:.0f} s old (limit {limit:g} s): the component is not running (or stuck)")
    if status.get("problem"):
        out.append(str(status["problem"]))
    for name, g in status.get("groups", {}).items():
        if g.get("missing_tags"):
            out.append(f"group {name}: tags never arrived: {', '.join(g['missing_tags'])}")
    for what, text in (status.get("errors") or {}).items():
        out.append(f"{what}: {text}")
    return out


def live_status(args: argparse.Namespace) -> int:
    """Print the running component's status; exit code per the module docstring."""
    status = find_status(args)
    if status is None:
        store = getattr(args, "store", None) or "data"
        print(f"no {COMPONENT} status under {store}/status: is the component running with store.path {store}? "
              "(pass --store)", file=sys.stderr)
        return 1
    now = time.time_ns()
    found = problems(status, now)
    if getattr(args, "json", False):
        print(json.dumps({**status, "problems": found}))
        return 1 if found else 0
    saved = _ago(status.get("last_save_ns"), now)
    print(f"{COMPONENT}  pid {status.get('pid')}  updated {_ago(status.get('updated_ns'), now)}  "
          f"model {status.get('restore', '-')} ({status.get('model_dir', '-')}), saved {saved}")
    inputs = ", ".join(
        f"{s} {i['state']}" + (f" (backlog {i['backlog_messages']})" if i.get("backlog_messages") else "")
        for s, i in status.get("inputs", {}).items()
    )
    print(f"  inputs: {inputs or '-'}   output: {status.get('output_stream', '-')}")
    rows = [["GROUP", "STATE", "SCORE", "THRESHOLD", "RAW", "ALARM", "LAST SCORED", "INVALID", "NOTE"]]
    for name, g in status.get("groups", {}).items():
        learning = g["state"] == "learning"
        invalid = g.get("invalid", {})
        worst = max(invalid, key=invalid.get) if invalid else ""
        note = f"missing: {', '.join(g['missing_tags'])}" if g.get("missing_tags") else worst
        rows.append([
            name,
            f"learning {100 * g.get('learning_share', 0):.0f} %" if learning else "scoring",
            "-" if g.get("score") is None else f"{g['score']:.2f}",
            "-" if learning else "1.00",
            _raw(g),
            "-" if learning else ("RAISED" if g.get("alarm") else "no"),
            _ago(g.get("last_scored_ns"), now),
            str(sum(invalid.values())),
            note,
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print("  SCORE and THRESHOLD: forest score divided by the group's threshold (1.00 is the alarm line); "
          "RAW: both in forest-score units")
    ev = current_names(status.get("events", {}))  # the previous version's names, from a gateway upgraded in place
    print(f"  alarm events: {'sent ' + str(ev.get('events_sent', 0)) if ev.get('enabled') else 'off (no IPC)'}"
          + (f", send errors {ev['event_send_errors']}" if ev.get("event_send_errors") else ""))
    for p in found:
        print(f"  PROBLEM: {p}")
    return 1 if found else 0


def _raw(group: dict[str, Any]) -> str:
    """``<forest score> of <threshold>``: the status file holds the score relative to the threshold, and the raw
    threshold (model.py reports scores divided by it), so both are shown in each unit, never mixed."""
    score, threshold = group.get("score"), group.get("threshold")
    if not isinstance(threshold, int | float) or threshold <= 0:
        return "-"
    return f"{'-' if score is None else f'{score * threshold:.3g}'} of {threshold:.3g}"


def _ago(ts_ns: Any, now_ns: int) -> str:
    if not ts_ns:
        return "never"
    s = (now_ns - int(ts_ns)) / 1e9
    return f"{s:.1f} s ago" if s < 90 else f"{s / 60:.0f} min ago" if s < 5400 else f"{s / 3600:.1f} h ago"
