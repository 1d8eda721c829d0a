"""``gatewayctl anomaly fit | score | status``: the offline replay, and the running component's state.

``gatewayctl`` calls :func:`register` with its subparsers; each command sets ``func`` to a handler taking the parsed
namespace and returning the exit code (0 ok, 1 unhealthy, 2 error with the message and fix on stderr).

Examples::

    gatewayctl anomaly status                       # the running component: groups, scores, alarms, problems
    gatewayctl anomaly status --store /var/lib/factoryedge/data --json
    gatewayctl anomaly status --model model/        # what a model folder holds
    gatewayctl anomaly fit --config groups.yaml --data normal.csv --model model/
    gatewayctl anomaly score --model model/ --data history.csv --out scores.csv --plot scores.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gateway.anomaly import offline
from gateway.anomaly.config import load_config
from gateway.anomaly.livestatus import live_status
from gateway.errors import GatewayError


def register(subparsers: Any) -> None:
    """Add the ``anomaly`` command group to ``gatewayctl``'s subparsers."""
    parser = subparsers.add_parser(
        "anomaly",
        help="the anomaly component's status; fit, score and inspect models on CSV history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="anomaly_command", required=True)

    fit = sub.add_parser("fit", help="learn normal behaviour from CSV history and write a model directory")
    fit.add_argument("--config", required=True, type=Path, help="groups YAML (AnomalyConfig)")
    fit.add_argument("--data", required=True, type=Path, nargs="+", help="normal history CSV file(s)")
    fit.add_argument("--model", required=True, type=Path, help="model directory to write")
    _common(fit)
    fit.set_defaults(func=_fit)

    score = sub.add_parser("score", help="score CSV history with a fitted model (the model is not changed)")
    score.add_argument("--model", required=True, type=Path, help="model directory written by fit")
    score.add_argument("--data", required=True, type=Path, help="history CSV to score")
    score.add_argument("--out", required=True, type=Path, help="output CSV, one row per input row")
    score.add_argument("--plot", type=Path, help="also write a PNG of scores, thresholds and alarms (matplotlib)")
    score.add_argument(
        "--updates",
        choices=["frozen", "gated"],
        default="gated",
        help="gated: the forest keeps learning from normal points, as the component does (default); "
        "frozen: score with the fitted model as it is",
    )
    _common(score)
    score.set_defaults(func=_score)

    status = sub.add_parser(
        "status",
        help="the running component's groups (state, score, alarm, invalid vectors), or with --model what a model "
        "directory holds; exit 1 when a group has tags that never arrive or the status is stale",
    )
    status.add_argument("--model", type=Path, help="show this model directory instead of the running component")
    status.add_argument("--store", default=argparse.SUPPRESS, help="the component's store.path (default ./data)")
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    status.set_defaults(func=_status)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval-s", type=float, help="seconds between rows when the CSV has no timestamp column")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a TTY")


def _fit(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        det = offline.fit(config, args.data, args.model, interval_s=args.interval_s, progress=_bar(args))
    except GatewayError as exc:
        return _fail(exc)
    for name, m in det.models.items():
        print(f"{name}: fitted, threshold {m.threshold:.4g} ({m.group.forest.backend})")
    print(f"model written to {args.model}")
    return 0


def _score(args: argparse.Namespace) -> int:
    try:
        rows = offline.score(
            args.model, args.data, args.out, updates=args.updates, interval_s=args.interval_s, progress=_bar(args)
        )
        if args.plot is not None:
            plot(rows, args.plot)
    except GatewayError as exc:
        return _fail(exc)
    alarmed = sum(int(r["alarm"]) for r in rows)
    print(f"{len(rows)} rows scored, {alarmed} in alarm; written to {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.model is None:
        return live_status(args)
    try:
        info = offline.status(args.model)
    except FileNotFoundError:
        print(f"no model in {args.model}: fit one with `gatewayctl anomaly fit`", file=sys.stderr)
        return 2
    except GatewayError as exc:
        return _fail(exc)
    print(json.dumps(info, indent=2 if not getattr(args, "json", False) else None))
    return 0


def _fail(exc: GatewayError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


class ProgressBar:
    """A one-line progress bar on a stream, redrawn at most every 0.2 s."""

    def __init__(self, stream: TextIO, width: int = 40) -> None:
        self.stream = stream
        self.width = width
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        share = done / total if total else 1.0
        filled = int(share * self.width)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} rows")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _bar(args: argparse.Namespace) -> ProgressBar | None:
    return ProgressBar(sys.stderr) if args.progress or sys.stderr.isatty() else None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """PNG of each group's score (threshold = 1.0) with alarm periods shaded.

    Raises:
        GatewayError: matplotlib is not installed (it is optional: only this plot needs it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise GatewayError(
            "--plot needs matplotlib, which is not installed", fix="pip install matplotlib==3.11.2, or omit --plot"
        ) from exc
    groups = [k[len("score_") :] for k in rows[0] if k.startswith("score_")] if rows else []
    hours = [(float(r["timestamp"]) - float(rows[0]["timestamp"])) / 3600 for r in rows]
    fig, axes = plt.subplots(len(groups) or 1, 1, figsize=(11, 2.2 * max(len(groups), 1)), sharex=True, squeeze=False)
    for ax, g in zip(axes[:, 0], groups, strict=False):
        pts = [(h, float(r[f"score_{g}"])) for h, r in zip(hours, rows, strict=True) if r[f"score_{g}"] != ""]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, label=f"{g} score / threshold")
        ax.axhline(1.0, color="red", lw=0.8, ls="--", label="threshold")
        alarm = [int(r[f"alarm_{g}"]) for r in rows]
        ax.fill_between(
            hours,
            0,
            1,
            where=[a == 1 for a in alarm],
            color="orange",
            alpha=0.3,
            transform=ax.get_xaxis_transform(),
            label="alarm",
        )
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("hours since first row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
