"""``gatewayctl anomaly``: the offline replay (fit, score) and the state of the running component (status).

``gatewayctl`` calls :func:`register` with its subparsers; each command sets ``func`` to a handler taking the parsed
namespace and returning the exit code (0 ok, 1 unhealthy or a group that never scored, 2 error with the message and
fix on stderr). What a user reads with ``gatewayctl anomaly --help`` is :data:`DESCRIPTION` and :data:`EXAMPLES`.
Each subcommand lists, with ``common_options``, which of gatewayctl's options common to every command it uses
(none of them by default): an option that does nothing is not offered.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gateway.anomaly import offline, suggest
from gateway.anomaly.config import load_config
from gateway.anomaly.livestatus import live_status
from gateway.anomaly.model import Updates
from gateway.errors import GatewayError

DESCRIPTION = """\
Anomaly detection on tag groups (docs/anomaly.md). Fit a model of normal behaviour on CSV history, score CSV
history with it exactly as the running component would, and show the running factoryedge.AnomalyDetector or a
model folder. Scores are a group's forest score divided by its threshold: 1.0 is the alarm line."""

EXAMPLES = """\
examples:
  gatewayctl anomaly suggest --data normal.csv --out groups.yaml
  gatewayctl anomaly fit --config groups.yaml --data normal.csv --model model/
  gatewayctl anomaly score --model model/ --data history.csv --out scores.csv --plot scores.png
  gatewayctl anomaly status                       the running component: groups, scores, alarms, problems
  gatewayctl anomaly status --model model/        what a model folder holds"""

#: ``--updates`` names (user-facing) and the library's: ``streaming`` is what the component does.
UPDATES: dict[str, Updates] = {"streaming": "gated", "frozen": "frozen"}
#: Spellings documented before, still accepted with a deprecation line.
DEPRECATED_UPDATES = {"gated": "streaming"}


def register(subparsers: Any) -> None:
    """Add the ``anomaly`` command group to ``gatewayctl``'s subparsers."""
    parser = subparsers.add_parser(
        "anomaly",
        help="the anomaly component's status; fit, score and inspect models on CSV history",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(common_options=())
    sub = parser.add_subparsers(dest="anomaly_command", required=True, metavar="COMMAND", title="commands")
    _add_fit(sub)
    _add_score(sub)
    _add_status(sub)
    _add_suggest(sub)


def _add_fit(sub: Any) -> None:
    fit = sub.add_parser(
        "fit",
        help="learn normal behaviour from CSV history and write a model folder; prints what it used and dropped, "
        "each threshold and the false-alarm rate it is expected to give",
        description="Learn normal behaviour from CSV history and write a model folder the component can start "
        "from. A group without cadence_s takes the CSV's sample period (median timestamp spacing).",
    )
    fit.add_argument("--config", required=True, type=Path, help="groups YAML (AnomalyConfig)")
    fit.add_argument("--data", required=True, type=Path, nargs="+", help="normal history CSV file(s)")
    fit.add_argument("--model", required=True, type=Path, help="model folder to write")
    _csv_options(fit)
    fit.set_defaults(func=_fit, common_options=())


def _add_score(sub: Any) -> None:
    score = sub.add_parser(
        "score",
        help="score CSV history with a fitted model (the model folder is not changed); exit 1 when a group "
        "never produced a score",
        description="Score CSV history with a fitted model, one output row per input row. The model folder is "
        "not changed. Exit 1 when a group never produced a score (the rows are written; why on stderr).",
    )
    score.add_argument("--model", required=True, type=Path, help="model folder written by fit")
    score.add_argument("--data", required=True, type=Path, help="history CSV to score")
    score.add_argument("--out", required=True, type=Path, help="output CSV, one row per input row")
    score.add_argument("--plot", type=Path, help="also write a PNG of scores, thresholds and alarms (matplotlib)")
    score.add_argument(
        "--updates",
        type=_updates,
        default="streaming",
        metavar="{streaming,frozen}",
        help="streaming (default): the model keeps learning from normal points while it scores, as the running "
        "component does; frozen: the fitted model scores unchanged",
    )
    _csv_options(score)
    score.set_defaults(func=_score, common_options=())


def _add_status(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="the running component's groups (state, score, alarm, invalid vectors), or with --model what a model "
        "folder holds; exit 1 when a group has tags that never arrive or the status is stale",
    )
    status.add_argument("--model", type=Path, help="show this model folder instead of the running component")
    status.add_argument("--store", default=argparse.SUPPRESS, help="the component's store.path (default ./data)")
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    # the component's work folder under Greengrass holds its status file too
    status.set_defaults(func=_status, common_options=("--greengrass-root",))


def _csv_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval-s", type=float, help="seconds between rows when the CSV has no timestamp column")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a TTY")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable summary")


def _updates(text: str) -> str:
    if text not in UPDATES and text not in DEPRECATED_UPDATES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(UPDATES)})")
    return text


def _fit(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        report = offline.fit_report(config, args.data, args.model, interval_s=args.interval_s, progress=_bar(args))
    except GatewayError as exc:
        return _fail(exc)
    if getattr(args, "json", False):
        print(json.dumps(report.to_json()))
        return 0
    period = f" ({report.period_s:g} s apart)" if report.period_s else ""
    print(f"fitted {len(report.groups)} group(s) on {report.rows} rows of {', '.join(report.files)}{period}")
    for name, g in report.groups.items():
        print("\n".join(_fit_lines(name, g)))
    for note in report.notes:
        print(f"note: {note}")
    print(f"model written to {args.model}")
    return 0


def _fit_lines(name: str, g: offline.GroupFit) -> list[str]:
    """A group's fit in three lines: vectors and what was dropped, the threshold, the rate it should give."""
    grp = g.group
    every = f"a vector every {grp.cadence_s:g} s" if grp.mode == "cadence" else "a vector per new sample"
    dropped = ", ".join(
        f"{n} {'filling the ' if r.startswith(('moving average', 'feature window')) else ''}{r}"
        for r, n in g.dropped.items() if n
    )
    lines = [f"{name} ({len(grp.tags)} tags, {grp.forest.backend}, {every}): {g.fitted_vectors} vectors fitted "
             f"from {g.rows} rows; not fitted: {dropped or 'none'}"]
    cal = g.calibration
    if cal is None:
        lines.append(f"  threshold {g.threshold:.4g} (forest score; 1.0 in reported scores); no calibration record")
        return lines
    how = "peaks-over-threshold tail" if cal.method == "pot" else "empirical quantile"
    note = f" ({cal.note})" if cal.note else ""
    lines.append(f"  threshold {g.threshold:.4g} (forest score; 1.0 in reported scores) from {cal.points} "
                 f"out-of-sample scores in {cal.folds} blocks, {how}{note}")
    unit = " (share of time in alarm)" if cal.level == "alarm" else ""
    lines.append(f"  expected false-alarm rate {_pct(cal.expected_rate)} % (90 % interval {_pct(cal.rate_low)} to "
                 f"{_pct(cal.rate_high)} %){unit}, configured {_pct(cal.target_rate)} %")
    return lines


def _pct(rate: float) -> str:
    """A rate in percent: two decimals from 0.1 %, two significant digits below, ``0`` only when it is zero.

    Why: the rates printed here are configured at 0.1 % and less, and the interval's low end runs an order of
    magnitude below: two decimals would show 0.013 % as 0.01 and 0.004 % as 0.00, which reads as "never". A low
    end that is exactly 0 (a bounded tail that ends below the threshold in some resamples) prints as 0.
    """
    pct = 100 * rate
    if pct == 0:
        return "0"
    decimals = 2 if pct >= 0.1 else 1 - math.floor(math.log10(pct))  # positional, never 9.5e-05
    return f"{pct:.{decimals}f}"


def _score(args: argparse.Namespace) -> int:
    if args.updates in DEPRECATED_UPDATES:
        print(f"gatewayctl: --updates {args.updates} is deprecated: it is called --updates "
              f"{DEPRECATED_UPDATES[args.updates]} now (same behaviour)", file=sys.stderr)
    mode = DEPRECATED_UPDATES.get(args.updates, args.updates)
    try:
        report = offline.score_report(
            args.model, args.data, args.out, updates=UPDATES[mode], interval_s=args.interval_s, progress=_bar(args)
        )
        if args.plot is not None:
            plot(report.rows, args.plot)
    except GatewayError as exc:
        return _fail(exc)
    if getattr(args, "json", False):
        print(json.dumps({**report.to_json(), "updates": mode, "out": str(args.out)}))
    else:
        for name in report.groups:
            alarmed = sum(int(r[f"alarm_{name}"]) for r in report.rows)
            print(f"{name}: {report.scores[name]} of {len(report.rows)} rows scored, {alarmed} in alarm")
        alarmed = sum(int(r["alarm"]) for r in report.rows)
        print(f"{len(report.rows)} rows, {alarmed} in alarm ({mode}); written to {args.out}")
    for name, why in report.silent().items():
        print(f"error: group {name!r} produced no score: {why}", file=sys.stderr)
    return 1 if report.silent() else 0


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


def _add_suggest(sub: Any) -> None:
    p = sub.add_parser(
        "suggest",
        help="propose tag groups from normal history (correlation clusters plus plant-wide groups) and write a "
        "commented groups YAML for fit",
        description="Propose tag groups from normal history: columns that are not numeric or do not vary are left "
        "out (with the reason), the sample period becomes cadence_s, tags are clustered on their correlation, and "
        "plant-wide groups of every tag are added. The defaults were chosen on tuning runs (docs/anomaly.md, "
        "'Choosing groups'). Writes YAML with comments that gatewayctl anomaly fit --config accepts.",
    )
    p.add_argument(
        "--data", required=True, type=Path, action="extend", nargs="+", metavar="CSV", help="normal history CSV file(s)"
    )
    p.add_argument("--out", type=Path, metavar="YAML", help="groups YAML to write (default: print it)")
    p.add_argument(
        "--max-group-size",
        type=int,
        default=suggest.DEFAULTS["max_group_size"],
        metavar="N",
        help=f"most tags in one correlation group (default {suggest.DEFAULTS['max_group_size']})",
    )
    p.add_argument(
        "--interval-s", type=float, metavar="S", help="seconds between rows when the CSV has no timestamp column"
    )
    p.add_argument("--json", action="store_true", help="print the configuration and the notes as JSON")
    p.set_defaults(func=_suggest, common_options=())


def _suggest(args: Any) -> int:
    """``gatewayctl anomaly suggest``: exit 0 with the configuration written, 2 with the problem and fix on stderr."""
    if args.max_group_size < 1:
        print(f"error: --max-group-size {args.max_group_size}. Fix: use 1 or more", file=sys.stderr)
        return 2
    try:
        s = suggest.suggest(list(args.data), interval_s=args.interval_s, max_group_size=args.max_group_size)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = suggest.render_yaml(s.config, s.notes)
    if args.out is not None:
        try:
            args.out.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc}. Fix: check the path", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"config": s.config, "notes": dataclasses.asdict(s.notes)}))
    elif args.out is None:
        print(text, end="")
    else:
        names = ", ".join(f"{g['name']} ({len(g['tags'])})" for g in s.config["groups"])
        print(f"{len(s.config['groups'])} groups: {names}; {len(s.notes.dropped)} column(s) left out")
        named = {g["name"] for g in s.config["groups"]}
        for n in s.notes.groups:
            if n.name not in named:
                print(f"{n.name} left out: {n.why}")
        print(f"written to {args.out}; next: gatewayctl anomaly fit --config {args.out} --data ... --model DIR")
    return 0
