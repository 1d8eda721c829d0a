"""Offline replay: fit and score CSV history with the exact code the component runs.

CSV format: a header row of tag names, one row per sample, optionally a ``timestamp`` column (seconds, epoch or
relative, or ISO 8601). Group members name columns. Without timestamps rows are ``interval_s`` apart. Every cell
becomes a :class:`Record` offered to a :class:`Detector`, which is polled at the row's time; empty or non-numeric
cells become BAD records, exactly as a collector would deliver them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly import persist
from gateway.anomaly.assembler import NS, VectorAssembler
from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.detector import Detector
from gateway.anomaly.model import Updates
from gateway.errors import ConfigError
from gateway.record import make_record

Progress = Callable[[int, int], None]
CONFIG_FILE = "groups.json"


def read_rows(path: str | Path, interval_s: float) -> tuple[list[str], Iterator[tuple[int, dict[str, float]]], int]:
    """Open a history CSV: (tag columns, iterator of (ts_ns, values by tag), number of data rows)."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            total = max(sum(1 for _ in fh) - 1, 0)
            fh.seek(0)
            header = next(csv.reader(fh), None)
    except OSError as exc:
        raise ConfigError(f"cannot read CSV {p}: {exc}", fix="check the path") from exc
    if not header:
        raise ConfigError(f"CSV {p} has no header row", fix="first row must name the tags")
    header = [h.strip() for h in header]
    ts_col = header.index("timestamp") if "timestamp" in header else None
    tags = [h for i, h in enumerate(header) if i != ts_col]

    def rows() -> Iterator[tuple[int, dict[str, float]]]:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader)
            for n, row in enumerate(reader):
                if not row:
                    continue
                ts = _ts_ns(row[ts_col], p, n) if ts_col is not None else int(n * interval_s * NS)
                yield ts, {h: _num(v) for h, v in zip(header, row, strict=False) if h != "timestamp"}

    return tags, rows(), total


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _ts_ns(text: str, path: Path, row: int) -> int:
    try:
        return round(float(text) * NS)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp() * NS)
    except ValueError as exc:
        raise ConfigError(
            f"CSV {path} row {row + 2}: timestamp {text!r} is neither seconds nor ISO 8601",
            fix="use seconds or ISO 8601 timestamps",
        ) from exc


def _check_columns(config: AnomalyConfig, tags: list[str], path: str | Path) -> None:
    problems = [f"group {g.name!r}: tag {t!r} is not a column" for g in config.groups for t in g.tags if t not in tags]
    if problems:
        raise ConfigError(
            f"CSV {path} lacks columns the groups name",
            problems=problems,
            fix="rename the group members or the CSV header",
        )


def _feed(det: Detector, path: str | Path, interval_s: float, progress: Progress | None) -> Iterator[int]:
    """Offer each CSV row to ``det`` as records; yield the row's time, at which the caller polls."""
    tags, rows, total = read_rows(path, interval_s)
    _check_columns(det.config, tags, path)
    wanted = sorted({t for g in det.config.groups for t in g.tags})
    for n, (ts, values) in enumerate(rows):
        for seq, tag in enumerate(wanted):
            det.offer(make_record("replay", tag, values[tag], seq=seq, source_ts_ns=ts, gateway_ts_ns=ts))
        yield ts
        if progress is not None:
            progress(n + 1, total)


def fit(
    config: AnomalyConfig,
    data: list[str | Path],
    model_dir: str | Path,
    *,
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> Detector:
    """Fit every group on normal history (each file one contiguous segment) and save the model.

    The vectors come from the component's own assemblers, so validity rules (stale, BAD, NaN) are the same.

    Raises:
        ConfigError: missing columns, or too little valid data for a group.
    """
    step = interval_s or min(g.cadence_s for g in config.groups)
    det = Detector(config, model_dir)
    segments: dict[str, list[list[np.ndarray[Any, Any]]]] = {g.name: [] for g in config.groups}
    for path in data:
        # fresh assemblers per file, so that no vector or shingle spans two files
        det.assemblers = {g.name: VectorAssembler(g) for g in config.groups}
        for seg in segments.values():
            seg.append([])
        for ts in _feed(det, path, step, progress):
            for name, a in det.assemblers.items():
                segments[name][-1].extend(v.values for v in a.poll(ts))
    for name, model in det.models.items():
        model.fit([np.asarray(s) for s in segments[name] if s])
    det.assemblers = {g.name: VectorAssembler(g) for g in config.groups}  # the CSV's timeline is not the plant's
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
    det.save()
    return det


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


def score(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path | None,
    *,
    updates: Updates = "gated",
    interval_s: float | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Score a history CSV; one output row per input row (also written to ``out`` as CSV when given).

    Columns: ``timestamp`` (s), ``score_<g>`` (empty until the group scores), ``alarm_<g>`` (0/1), ``score``
    (max over groups), ``alarm`` (any group), ``top_tags`` (of the highest-scoring group in alarm).
    The model directory is not modified: scoring a file never changes the deployed model.
    """
    det = load_detector(model_dir, updates)
    step = interval_s or min(g.cadence_s for g in det.config.groups)
    names = [g.name for g in det.config.groups]
    last: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    for ts in _feed(det, data, step, progress):
        fresh = dict(det.poll_results(ts))
        last.update(fresh)
        row: dict[str, Any] = {"timestamp": ts / NS}
        for name in names:
            r = fresh.get(name)
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
    return rows


def status(model_dir: str | Path) -> dict[str, Any]:
    """What the saved model holds, per group (state, backend, threshold, counters, alarm)."""
    manifest, forests = persist.load(model_dir)
    out: dict[str, Any] = {"format_version": manifest["format_version"], "saved_ns": manifest["saved_ns"]}
    for name, g in manifest["groups"].items():
        out[name] = {
            "state": "scoring" if name in forests else "learning",
            "backend": g["backend"],
            "tags": len(g["fingerprint"]["tags"]),
            "threshold": g["threshold"],
            "alarm": g["alarm"]["active"],
            "learning_vectors": len(g["learning"]),
            "counters": g["counters"],
        }
    return out
