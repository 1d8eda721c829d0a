"""Offline replay: fit and score CSV history with the exact code the component runs.

CSV format and sample period: :mod:`gateway.anomaly.history` (group members name columns; a group whose
``cadence_s`` is not set takes the CSV's period). Every cell becomes a :class:`Record` offered to a
:class:`Detector`, which is polled at the row's time; empty or non-numeric cells become BAD records, exactly as a
collector would deliver them. :func:`fit_report` and :func:`score_report` also say what was used, dropped and why,
and which group never produced a score, so that nothing fails silently.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly import persist
from gateway.anomaly.assembler import NS, Vector, VectorAssembler
from gateway.anomaly.calibration import Calibration
from gateway.anomaly.config import AnomalyConfig, TagGroup
from gateway.anomaly.detector import Detector
from gateway.anomaly.featurespec import window_of
from gateway.anomaly.history import (
    GAP_CADENCES,
    check_columns,
    check_period,
    data_period,
    header,
    read_rows,
    resolve_cadences,
    sample_period,
    window_text,
)
from gateway.anomaly.model import Updates
from gateway.errors import ConfigError
from gateway.record import make_record

__all__ = ["CONFIG_FILE", "FitReport", "GroupFit", "ScoreReport", "fit", "fit_report", "load_detector", "read_rows",
           "score", "score_report", "status"]

Progress = Callable[[int, int], None]
CONFIG_FILE = "groups.json"


def _feed(det: Detector, path: str | Path, interval_s: float, progress: Progress | None) -> Iterator[int]:
    """Offer each CSV row to ``det`` as records; yield the row's time, at which the caller polls."""
    check_columns(det.config, header(path), path)
    _tags, rows, total = read_rows(path, interval_s)
    wanted = sorted({t for g in det.config.groups for t in g.tags})
    for n, (ts, values) in enumerate(rows):
        for seq, tag in enumerate(wanted):
            det.offer(make_record("replay", tag, values[tag], seq=seq, source_ts_ns=ts, gateway_ts_ns=ts))
        yield ts
        if progress is not None:
            progress(n + 1, total)


@dataclass
class GroupFit:
    """What the fit of one group used, dropped and set.

    Attributes:
        rows: CSV rows read (all files).
        vectors: valid vectors assembled from them.
        dropped: rows or vectors not fitted on, by reason: the assembler's invalid reasons (``bad:<tag>``,
            ``stale:<tag>``...), ``between cadence ticks`` (rows closer than ``cadence_s``), ``moving average of
            N`` / ``feature window of N`` (vectors that fill the window at the start of each contiguous piece).
        fitted_vectors: vectors the transform, forest and calibration were fitted on.
        cadence_s: seconds between vectors (None in on_sample mode).
        calibration: how the threshold was set (None when the model keeps none).
    """

    group: TagGroup
    rows: int = 0
    vectors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fitted_vectors: int = 0
    threshold: float = 0.0
    calibration: Calibration | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (``gatewayctl anomaly fit --json``)."""
        g = self.group
        return {
            "tags": len(g.tags),
            "backend": g.forest.backend,
            "cadence_s": g.cadence_s if g.mode == "cadence" else None,
            "rows": self.rows,
            "vectors": self.vectors,
            "dropped": self.dropped,
            "fitted_vectors": self.fitted_vectors,
            "threshold": self.threshold,
            "false_alarm_rate": g.false_alarm_rate,
            "calibration": self.calibration.to_state() if self.calibration else None,
        }


@dataclass
class FitReport:
    """The outcome of :func:`fit_report`: the detector, and what each group was fitted on."""

    detector: Detector
    model_dir: Path
    files: list[str]
    rows: int
    period_s: float | None
    groups: dict[str, GroupFit]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (``gatewayctl anomaly fit --json``)."""
        return {
            "model": str(self.model_dir),
            "files": self.files,
            "rows": self.rows,
            "period_s": self.period_s,
            "groups": {n: g.to_json() for n, g in self.groups.items()},
            "notes": self.notes,
        }


def fit(
    config: AnomalyConfig,
    data: Sequence[str | Path],
    model_dir: str | Path,
    *,
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> Detector:
    """Fit every group on normal history and save the model; :func:`fit_report` without the report."""
    return fit_report(config, data, model_dir, interval_s=interval_s, progress=progress).detector


def fit_report(
    config: AnomalyConfig,
    data: Sequence[str | Path],
    model_dir: str | Path,
    *,
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> FitReport:
    """Fit every group on normal history (each file, and each stretch between gaps, one contiguous segment), save
    the model, and say what was used and dropped.

    The vectors come from the component's own assemblers, so validity rules (stale, BAD, NaN) are the same. A
    cadence group without ``cadence_s`` takes the CSV's sample period (:mod:`gateway.anomaly.history`); the model
    folder's ``groups.json`` records the configuration as fitted.

    Raises:
        ConfigError: missing columns, files of different periods, an explicit cadence that could never score on
            these rows, or too little valid data for a group.
    """
    period = data_period(data, interval_s)
    config, notes = resolve_cadences(config, period)
    step = interval_s or min(g.cadence_s for g in config.groups)
    det = Detector(config, model_dir)
    fits = {g.name: GroupFit(g) for g in config.groups}
    segments: dict[str, list[list[Vector]]] = {g.name: [] for g in config.groups}
    rows = 0
    for path in data:
        # fresh assemblers per file, so that no vector or shingle spans two files
        det.assemblers = {g.name: VectorAssembler(g) for g in config.groups}
        for seg in segments.values():
            seg.append([])
        for ts in _feed(det, path, step, progress):
            rows += 1
            for name, a in det.assemblers.items():
                for v in a.poll(ts):
                    _extend(segments[name], v, a.group)
        for name, a in det.assemblers.items():
            _count(fits[name], a)
    for name, model in det.models.items():
        pieces = [np.asarray([v.values for v in s]) for s in segments[name] if s]
        _warmup(fits[name], [len(p) for p in pieces], rows)
        model.fit(pieces)
        fits[name].threshold, fits[name].calibration = model.threshold, model.calibration
    det.assemblers = {g.name: VectorAssembler(g) for g in config.groups}  # the CSV's timeline is not the plant's
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
    det.save()
    return FitReport(det, Path(model_dir), [str(p) for p in data], rows, period, fits, notes)


def _extend(segments: list[list[Vector]], v: Vector, group: TagGroup) -> None:
    """Append ``v``; after a gap (as :meth:`GroupModel.step` sees one) start a new contiguous segment."""
    last = segments[-1][-1] if segments[-1] else None
    if group.mode == "cadence" and last is not None and v.ts_ns - last.ts_ns > GAP_CADENCES * group.cadence_s * NS:
        segments.append([])
    segments[-1].append(v)


def _count(fit: GroupFit, a: VectorAssembler) -> None:
    """Add one file's assembler counts to ``fit``."""
    fit.vectors += a.emitted
    for reason, n in a.invalid.items():
        fit.dropped[reason] = fit.dropped.get(reason, 0) + n


def _warmup(fit: GroupFit, pieces: list[int], rows: int) -> None:
    """Rows that made no vector, and vectors that fill the moving average or feature window, into ``fit``."""
    g = fit.group
    fit.rows = rows
    between = rows - fit.vectors - sum(fit.dropped.values())
    if between > 0:
        fit.dropped["between cadence ticks" if g.mode == "cadence" else "no new member value"] = between
    window = window_of(g.features, g.feature_window)
    averaged = [max(n - (g.smoothing - 1), 0) for n in pieces]
    featured = [max(n - (window - 1), 0) for n in averaged]
    if g.smoothing > 1:
        fit.dropped[f"moving average of {g.smoothing}"] = sum(pieces) - sum(averaged)
    if window > 1:
        fit.dropped[f"feature window of {window}"] = sum(averaged) - sum(featured)
    fit.fitted_vectors = sum(featured)


def load_detector(model_dir: str | Path, updates: Updates = "gated") -> Detector:
    """A detector restored from a fitted model directory (config saved next to the model by :func:`fit`)."""
    cfg_path = Path(model_dir) / CONFIG_FILE
    if not cfg_path.exists():
        raise ConfigError(f"{cfg_path} not found", fix="fit a model first: gatewayctl anomaly fit ... --model DIR")
    config = AnomalyConfig.model_validate_json(cfg_path.read_text(encoding="utf-8"))
    det = Detector(config, model_dir, updates=updates)
    if det.restore() != "restored":
        raise persist.ModelCorrupt(f"no usable model in {model_dir}", fix="fit again with gatewayctl anomaly fit")
    # a model saved by the component carries its live assembly state (latest values, next tick): a CSV starts anew
    det.assemblers = {g.name: VectorAssembler(g) for g in config.groups}
    for m in det.models.values():
        m.shingler.reset()
        m.smoother.reset()
        m.features.reset()
        m.last_ts_ns = None
    return det


@dataclass
class ScoreReport:
    """The outcome of :func:`score_report`: the output rows, and per group what it made of them."""

    rows: list[dict[str, Any]]
    period_s: float | None
    vectors: dict[str, int]
    invalid: dict[str, dict[str, int]]
    scores: dict[str, int]
    groups: dict[str, TagGroup]

    def silent(self) -> dict[str, str]:
        """Each group that never produced a score, with why and the fix."""
        return {name: self._why(name) for name, n in self.scores.items() if n == 0}

    def _why(self, name: str) -> str:
        g, vectors, invalid = self.groups[name], self.vectors[name], self.invalid[name]
        if not self.rows:
            return "the CSV has no data rows. Fix: score a CSV with data rows"
        if vectors == 0 and invalid:
            worst = ", ".join(f"{r} {n}" for r, n in sorted(invalid.items(), key=lambda i: -i[1])[:3])
            return (f"none of its {sum(invalid.values())} vectors was valid ({worst}). Fix: check these tags' "
                    f"cells (empty or non-numeric cells are BAD; stale: older than max_age_s {g.max_age_s:g} s)")
        if vectors == 0:
            return f"no vector was due in {len(self.rows)} rows. Fix: check the timestamps and the group's mode"
        return (f"its {vectors} valid vectors never filled {window_text(g)} (consecutive vectors, at most "
                f"{GAP_CADENCES:g} x cadence_s {g.cadence_s:g} s apart). Fix: score a longer stretch without gaps")

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (``gatewayctl anomaly score --json``)."""
        silent = self.silent()
        return {
            "rows": len(self.rows),
            "rows_in_alarm": sum(int(r["alarm"]) for r in self.rows),
            "period_s": self.period_s,
            "groups": {
                n: {"vectors": self.vectors[n], "invalid": self.invalid[n], "scores": self.scores[n],
                    "rows_in_alarm": sum(int(r[f"alarm_{n}"]) for r in self.rows),
                    **({"no_score": silent[n]} if n in silent else {})}
                for n in self.groups
            },
        }


def score(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path | None,
    *,
    updates: Updates = "gated",
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Score a history CSV; the output rows of :func:`score_report`."""
    return score_report(model_dir, data, out, updates=updates, interval_s=interval_s, progress=progress).rows


def score_report(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path | None,
    *,
    updates: Updates = "gated",
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score a history CSV; one output row per input row (also written to ``out`` as CSV when given).

    Columns: ``timestamp`` (s), ``score_<g>`` (empty until the group scores), ``alarm_<g>`` (0/1), ``score``
    (max over groups), ``alarm`` (any group), ``top_tags`` (of the highest-scoring group in alarm).
    The model directory is not modified: scoring a file never changes the deployed model.
    :meth:`ScoreReport.silent` names the groups that never produced a score, and why.

    Raises:
        ConfigError: missing columns, or rows further apart than a windowed group's cadence (it could never score).
    """
    det = load_detector(model_dir, updates)
    step = interval_s or min(g.cadence_s for g in det.config.groups)
    period = sample_period(data) or step
    for g in det.config.groups:
        check_period(g, period, "score")
    names = [g.name for g in det.config.groups]
    last: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    counts = dict.fromkeys(names, 0)

    for ts in _feed(det, data, step, progress):
        fresh = dict(det.poll_results(ts))
        last.update(fresh)
        row: dict[str, Any] = {"timestamp": ts / NS}
        for name in names:
            r = fresh.get(name)
            counts[name] += r is not None
            row[f"score_{name}"] = round(r.score, 6) if r is not None else ""
            row[f"alarm_{name}"] = int(last[name].alarm) if name in last else 0
        current = [last[n] for n in names if n in last]
        row["score"] = round(max(r.score for r in current), 6) if current else ""
        row["alarm"] = int(any(r.alarm for r in current))
        alarmed = sorted((r for r in current if r.alarm), key=lambda r: r.score, reverse=True)
        row["top_tags"] = ";".join(f"{t}:{s:.2f}" for t, s in alarmed[0].top_tags) if alarmed else ""
        rows.append(row)

    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["timestamp"])
            writer.writeheader()
            writer.writerows(rows)
    return ScoreReport(
        rows,
        period,
        {n: a.emitted for n, a in det.assemblers.items()},
        {n: dict(a.invalid) for n, a in det.assemblers.items()},
        counts,
        {g.name: g for g in det.config.groups},
    )


def status(model_dir: str | Path) -> dict[str, Any]:
    """What the saved model holds, per group (state, backend, threshold and its calibration, counters, alarm)."""
    manifest, forests = persist.load(model_dir)
    out: dict[str, Any] = {"format_version": manifest["format_version"], "saved_ns": manifest["saved_ns"]}
    for name, g in manifest["groups"].items():
        out[name] = {
            "state": "scoring" if name in forests else "learning",
            "backend": g["backend"],
            "tags": len(g["fingerprint"]["tags"]),
            "threshold": g["threshold"],
            "calibration": g.get("calibration"),  # how the threshold was set; absent from models saved before
            "alarm": g["alarm"]["active"],
            "learning_vectors": len(g["learning"]),
            "counters": g["counters"],
        }
    return out
