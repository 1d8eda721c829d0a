"""Propose tag groups from normal history: ``gatewayctl anomaly suggest``.

A plant engineer has normal history and no time to tune. From one or more normal CSVs (the format
:mod:`gateway.anomaly.offline` reads) this module:

1. drops columns that cannot be scored or that carry nothing (mostly empty or non-numeric; constant or almost
   always one value), saying which and why;
2. infers the sample period from the timestamps (it becomes every group's ``cadence_s``);
3. clusters the remaining tags on their correlation: agglomerative, average linkage on the distance
   ``1 - |corr|``, merging while the average distance between two clusters is at most ``cut`` and the merged
   cluster has at most ``max_group_size`` tags. Tags that move together belong to one unit of the plant (a loop,
   a vessel), so a fault that breaks their usual relation is scored by a forest that knows it;
4. adds a ``plant`` group of every kept tag, whitened: it catches faults that break the plant-wide correlation
   structure, which no unit group sees.

The defaults (``DEFAULTS``) were chosen on tuning runs of the Tennessee Eastman simulator only (normal seeds 1-6
to suggest and fit, normal seeds 11-12 and the IDV 1-20 runs of seeds 1001-1020 to score; docs/anomaly.md,
"Choosing groups"); the held-out test runs score them once.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from gateway.anomaly.assembler import NS
from gateway.anomaly.config import AnomalyConfig, TagGroup, min_training_vectors
from gateway.anomaly.offline import read_rows
from gateway.errors import ConfigError

Array = NDArray[np.float64]

#: Chosen on the tuning runs (see the module docstring); every one can be overridden by a keyword of suggest().
DEFAULTS: dict[str, Any] = {
    "cut": 0.5,  # merge while the average 1 - |corr| between two clusters is at most this
    "max_group_size": 12,
    "plant_group": True,
    "smoothing": 1,  # moving average of the unit groups
    "plant_smoothing": 5,  # above 1: a second plant-wide group averaged over this many samples
    "shingle": 1,
    "false_alarm_rate": 0.005,  # for the detector as a whole: split over the groups
    "raise_after": 2,
    "clear_after": 3,
}
#: A column with more empty or non-numeric cells than this share is not a numeric tag.
MAX_MISSING = 0.5
#: A column whose most common value fills this share of rows is near-constant: whitening would turn its rare
#: moves into the loudest thing in the group.
MAX_SAME_VALUE = 0.99


@dataclass(frozen=True)
class Dropped:
    """A column left out of every group, and why."""

    column: str
    reason: str


@dataclass(frozen=True)
class GroupNote:
    """Why a group was proposed: its tags' mean absolute correlation with each other."""

    name: str
    why: str


@dataclass
class Notes:
    """What :func:`suggest` saw and decided, for the comments of the written file."""

    files: list[str]
    rows: int
    period_s: float
    options: dict[str, Any]
    dropped: list[Dropped] = field(default_factory=list)
    groups: list[GroupNote] = field(default_factory=list)
    uncorrelated: list[str] = field(default_factory=list)


@dataclass
class Suggestion:
    """A proposed configuration (a dict that validates as :class:`AnomalyConfig`) and the notes behind it."""

    config: dict[str, Any]
    notes: Notes


def suggest_config(paths: list[Path], **options: Any) -> dict[str, Any]:
    """A groups configuration proposed from normal history (see :func:`suggest` for the options)."""
    return suggest(paths, **options).config


def suggest(paths: list[Path], *, interval_s: float | None = None, **options: Any) -> Suggestion:
    """Propose groups from normal history CSVs.

    Args:
        paths: normal history CSVs (header of tag names, optional ``timestamp`` column), each one contiguous run.
        interval_s: seconds between rows, for CSVs without a ``timestamp`` column.
        **options: any key of :data:`DEFAULTS` (cut, max_group_size, plant_group, smoothing, shingle,
            false_alarm_rate, raise_after, clear_after).

    Raises:
        ConfigError: unreadable CSV, no usable numeric column, no period, too few rows, or an unknown option.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown suggest option(s) {unknown}", fix=f"use one of {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    if not paths:
        raise ConfigError("no normal history given", fix="pass at least one CSV with --data")
    columns, data, period = _read(paths, interval_s)
    notes = Notes(files=[str(p) for p in paths], rows=len(data), period_s=period, options=opts)
    keep = _screen(columns, data, notes)
    if not keep:
        raise ConfigError(
            f"no numeric column with variation in {', '.join(notes.files)} (dropped: "
            + "; ".join(f"{d.column}: {d.reason}" for d in notes.dropped)
            + ")",
            fix="give normal history with at least one numeric, varying tag column",
        )
    x = data[:, keep]
    x = x[np.all(np.isfinite(x), axis=1)]
    tags = [columns[i] for i in keep]
    corr = _abs_corr(x)
    clusters = cluster(corr, cut=float(opts["cut"]), max_size=int(opts["max_group_size"]))
    groups = _groups(tags, corr, clusters, len(x), period, opts, notes)
    config = {"save_interval_s": 300, "groups": groups}
    AnomalyConfig.model_validate(config)  # a suggestion that does not load is a bug here, not the user's problem
    return Suggestion(config, notes)


def _read(paths: list[Path], interval_s: float | None) -> tuple[list[str], Array, float]:
    """All files' rows (columns of the first file; later files must have them) and the sample period."""
    columns: list[str] | None = None
    blocks: list[Array] = []
    steps: list[Array] = []
    for path in paths:
        tags, rows, _ = read_rows(path, interval_s if interval_s is not None else 0.0)
        if columns is None:
            columns = tags
        missing = [t for t in columns if t not in tags]
        if missing:
            raise ConfigError(
                f"CSV {path} lacks column(s) {missing} of {paths[0]}",
                fix="give files of the same tags (same header)",
            )
        ts: list[int] = []
        values: list[list[float]] = []
        for t, row in rows:
            ts.append(t)
            values.append([row.get(c, math.nan) for c in columns])
        blocks.append(np.asarray(values, dtype=np.float64).reshape(len(values), len(columns)))
        steps.append(np.diff(np.asarray(ts, dtype=np.float64)) / NS)
    assert columns is not None
    if not columns:
        raise ConfigError(f"CSV {paths[0]} has no tag column", fix="the header must name the tags")
    data = np.concatenate(blocks)
    if interval_s is not None:
        return columns, data, float(interval_s)
    positive = np.concatenate(steps)
    positive = positive[positive > 0]
    if not len(positive):
        raise ConfigError(
            f"cannot infer the sample period of {paths[0]}: no timestamp column, or its timestamps do not advance",
            fix="add a timestamp column (seconds or ISO 8601) or pass --interval-s",
        )
    return columns, data, float(np.median(positive))


def _screen(columns: list[str], data: Array, notes: Notes) -> list[int]:
    """Indices of the columns worth grouping; the others go to ``notes.dropped`` with the reason."""
    keep: list[int] = []
    n = len(data)
    for i, name in enumerate(columns):
        col = data[:, i]
        finite = col[np.isfinite(col)]
        bad = n - len(finite)
        if bad > MAX_MISSING * n:
            notes.dropped.append(Dropped(name, f"not numeric: {bad} of {n} cells are empty or not numbers"))
            continue
        values, counts = np.unique(finite, return_counts=True)
        if len(values) < 2:
            notes.dropped.append(Dropped(name, f"constant ({finite[0]:g} in every row): nothing to learn"))
            continue
        top = int(counts.max())
        if top >= MAX_SAME_VALUE * len(finite):
            notes.dropped.append(
                Dropped(
                    name,
                    f"near-constant: {values[counts.argmax()]:g} in {top} of {len(finite)} rows; its rare moves "
                    "would dominate any group",
                )
            )
            continue
        keep.append(i)
    return keep


def _abs_corr(x: Array) -> Array:
    """|Pearson correlation| of the columns of ``x``."""
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    corr = np.abs(z.T @ z) / len(z)
    np.fill_diagonal(corr, 1.0)
    return np.asarray(np.clip(corr, 0.0, 1.0), dtype=np.float64)


def cluster(abs_corr: Array, *, cut: float, max_size: int) -> list[list[int]]:
    """Agglomerative clustering, average linkage on ``1 - |corr|``, with a distance cut and a size cap.

    Two clusters merge while the mean distance between their members is at most ``cut`` and the merged cluster has
    at most ``max_size`` members; the closest eligible pair merges first. Returns the clusters (index lists, each
    sorted, ordered by their first index); singletons included.
    """
    n = len(abs_corr)
    dist = 1.0 - abs_corr.astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    members: list[list[int] | None] = [[i] for i in range(n)]
    sizes = np.ones(n)
    alive = np.ones(n, dtype=bool)
    while True:
        fits = (sizes[:, None] + sizes[None, :]) <= max_size
        live = alive[:, None] & alive[None, :] & fits
        masked = np.where(live, dist, np.inf)
        flat = int(np.argmin(masked))
        i, j = divmod(flat, n)
        if not np.isfinite(masked[i, j]) or masked[i, j] > cut:
            break
        # Lance-Williams update for average linkage: the merged cluster's mean distance to every other cluster
        merged = (sizes[i] * dist[i] + sizes[j] * dist[j]) / (sizes[i] + sizes[j])
        dist[i, :] = merged
        dist[:, i] = merged
        dist[i, i] = np.inf
        dist[j, :] = np.inf
        dist[:, j] = np.inf
        a, b = members[i], members[j]
        assert a is not None and b is not None
        members[i], members[j] = sorted(a + b), None
        sizes[i] += sizes[j]
        alive[j] = False
    return sorted((m for m in members if m is not None), key=lambda m: m[0])


def _groups(
    tags: list[str],
    corr: Array,
    clusters: list[list[int]],
    rows: int,
    period: float,
    opts: dict[str, Any],
    notes: Notes,
) -> list[dict[str, Any]]:
    units = [c for c in clusters if len(c) > 1]
    notes.uncorrelated = [tags[c[0]] for c in clusters if len(c) == 1]
    plant = bool(opts["plant_group"]) and len(tags) > 1
    if not plant:
        units += [c for c in clusters if len(c) == 1]  # without the plant group a lone tag needs a group of its own
    common: dict[str, Any] = {
        "cadence_s": _round(period),
        "max_age_s": _round(2.5 * period),
        "raise_after": int(opts["raise_after"]),
        "clear_after": int(opts["clear_after"]),
        "shingle": int(opts["shingle"]),
    }
    out = _plant_groups(tags, corr, rows, int(opts["plant_smoothing"]), common, notes) if plant else []
    smoothing = int(opts["smoothing"])
    for k, c in enumerate(units, 1):
        sub = corr[np.ix_(c, c)]
        centre = c[int(np.argmax(sub.sum(axis=0)))]
        g = {"name": _name(k, tags[centre]), "tags": [tags[i] for i in c], **common}
        if smoothing > 1:
            # an averaged fault grows over a window: do not let the forest learn it on its way up (docs/anomaly.md)
            g.update(smoothing=smoothing, update_below=0.6)
        if not _enough(g, rows):
            raise ConfigError(_too_few(g, rows), fix="supply more normal history")
        out.append(g)
        why = (
            f"{len(c)} tags, mean |corr| {_mean(sub):.2f} (weakest pair {sub.min():.2f}), around {tags[centre]}"
            if len(c) > 1
            else f"{tags[c[0]]} alone: no tag correlates with it above 1 - cut"
        )
        notes.groups.append(GroupNote(g["name"], why))
    if not out:
        raise ConfigError(
            f"{rows} complete rows are too few for any group: " + "; ".join(n.why for n in notes.groups),
            fix="supply more normal history, or lower --max-group-size to get unit groups",
        )
    for g in out:
        # the detector alarms when any group does: split the budget so that the whole stays near it
        g["false_alarm_rate"] = _round(float(opts["false_alarm_rate"]) / len(out))
        g["training_points"] = max(1000, min_training_vectors(TagGroup.model_validate(g)))
    return out


def _plant_groups(
    tags: list[str], corr: Array, rows: int, window: int, common: dict[str, Any], notes: Notes
) -> list[dict[str, Any]]:
    """``plant`` (every kept tag, whitened) and, with ``window`` > 1, ``plant_avg`` (the same, averaged first)."""
    plain = {"name": "plant", "tags": list(tags), **common}
    averaged = {**plain, "name": "plant_avg", "smoothing": window, "update_below": 0.6}
    why = {
        "plant": f"all {len(tags)} kept tags whitened together (mean |corr| {_mean(corr):.2f}): catches faults that "
        "break the plant-wide correlation structure",
        "plant_avg": f"all kept tags averaged over {window} samples, then whitened: lifts small persistent shifts "
        "of noisy tags (a valve, a flow) out of their sample-to-sample noise",
    }
    out: list[dict[str, Any]] = []
    for g in [plain, averaged] if window > 1 else [plain]:
        if _enough(g, rows):
            out.append(g)
            notes.groups.append(GroupNote(g["name"], why[g["name"]]))
        else:
            notes.groups.append(GroupNote(g["name"], _too_few(g, rows)))
    return out


def _enough(group: dict[str, Any], rows: int) -> bool:
    return rows >= min_training_vectors(TagGroup.model_validate(group))


def _too_few(group: dict[str, Any], rows: int) -> str:
    need = min_training_vectors(TagGroup.model_validate(group))
    return f"group {group['name']!r} of {len(group['tags'])} tags needs at least {need} rows of normal data, got {rows}"


def _mean(sub: Array) -> float:
    """Mean off-diagonal |corr|."""
    n = len(sub)
    return float((sub.sum() - n) / (n * n - n)) if n > 1 else 1.0


def _name(k: int, centre: str) -> str:
    # the number keeps names unique; the central tag says where the unit is; a tag name may hold characters a group
    # name may not (OPC UA node ids: ns=2;s=...)
    return f"unit{k:02d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", centre)[:40]


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def render_yaml(config: dict[str, Any], notes: Notes) -> str:
    """The configuration as YAML, with comments: where it came from, why each group, what was dropped, how to edit."""
    o = notes.options
    lines = [
        "# Anomaly groups proposed by `gatewayctl anomaly suggest` (gateway/anomaly/suggest.py) from",
        *(f"#   {f}" for f in notes.files),
        f"# {notes.rows} rows, sample period {notes.period_s:g} s (every group's cadence_s).",
        f"# Clustering: average linkage on 1 - |corr|, cut {o['cut']}, at most {o['max_group_size']} tags a group; "
        f"plant-wide group: {'yes' if o['plant_group'] else 'no'}.",
        f"# false_alarm_rate {o['false_alarm_rate']} for the detector as a whole, split evenly over the groups.",
        "#",
        "# How to edit: these groups follow correlation in normal data, not your P&ID. Rename groups, move tags",
        "# between them, or merge them along process units (docs/anomaly.md, 'Choosing groups'); keep the plant",
        "# group. A noisy valve whose small shifts matter: set smoothing (e.g. 5) on its unit's group.",
        "# Then: gatewayctl anomaly fit --config THIS.yaml --data NORMAL.csv --model DIR",
    ]
    if notes.dropped:
        lines += [
            "#",
            "# Columns left out (add one back to a group if a fault may move it: the eigenvalue floor scores it):",
        ]
        lines += [f"#   {d.column}: {d.reason}" for d in notes.dropped]
    if notes.uncorrelated and o["plant_group"]:
        lines += [
            "#",
            *textwrap.wrap(
                "In the plant groups only (no tag correlates with them above 1 - cut): "
                + ", ".join(notes.uncorrelated),
                width=116,
                initial_indent="# ",
                subsequent_indent="#   ",
            ),
        ]
    named = {g["name"] for g in config["groups"]}
    left_out = [f"#   {n.name}: {n.why}" for n in notes.groups if n.name not in named]
    if left_out:
        lines += ["#", "# Groups left out:", *left_out]
    lines += ["", f"save_interval_s: {config['save_interval_s']}", "groups:"]
    why = {n.name: n.why for n in notes.groups}
    for g in config["groups"]:
        lines.append(f"# {g['name']}: {why.get(g['name'], '')}")
        lines.append(yaml.safe_dump([g], sort_keys=False, default_flow_style=None, width=112).rstrip())
    return "\n".join(lines) + "\n"
