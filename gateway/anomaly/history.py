"""History CSVs for the offline replay: reading rows, their sample period, and checking them against the groups.

CSV format: a header row of tag names, one row per sample, optionally a ``timestamp`` column (seconds, epoch or
relative, or ISO 8601). Without timestamps rows are ``interval_s`` apart.

**Sample period and ``cadence_s``.** A cadence group assembles one vector every ``cadence_s``, and its moving
average, shingle and feature window hold *consecutive* vectors: two vectors more than 1.5 cadences apart are a gap,
after which the windows start again. A historian export at 3 minutes scored by a group left at the 1 s default
therefore never fills a window and never scores. :func:`resolve_cadences` settles this before anything is fitted:

- ``cadence_s`` not set in the group: it becomes the CSV's sample period (median spacing of the timestamps). A plant
  engineer who exports history at the historian's period and leaves ``cadence_s`` out means "one vector per row";
  refusing would make them learn a setting to say what the data already says. The fit prints the period it took,
  and the model folder records it, so the component assembles the same vectors (the fit says to set it there too).
- ``cadence_s`` set, and the rows further apart than 1.5 cadences in a group with a window: refused with the
  group, both periods and the fix. A value someone wrote down is not overridden; the model could never score.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from gateway.anomaly.assembler import NS
from gateway.anomaly.config import AnomalyConfig, TagGroup
from gateway.anomaly.featurespec import window_of
from gateway.errors import ConfigError

#: Two vectors further apart than this many cadences are a gap (as in :meth:`GroupModel.step`).
GAP_CADENCES = 1.5
#: CSV files fitted together may differ in period by this share (a historian's rounding), not more.
PERIOD_TOLERANCE = 0.01


def read_rows(path: str | Path, interval_s: float) -> tuple[list[str], Iterator[tuple[int, dict[str, float]]], int]:
    """Open a history CSV: (tag columns, iterator of (ts_ns, values by tag), number of data rows)."""
    p = Path(path)
    names = header(p)
    with open(p, newline="", encoding="utf-8") as fh:
        total = max(sum(1 for _ in fh) - 1, 0)
    ts_col = names.index("timestamp") if "timestamp" in names else None
    tags = [h for i, h in enumerate(names) if i != ts_col]

    def rows() -> Iterator[tuple[int, dict[str, float]]]:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader)
            for n, row in enumerate(reader):
                if not row:
                    continue
                ts = _ts_ns(row[ts_col], p, n) if ts_col is not None else int(n * interval_s * NS)
                yield ts, {h: _num(v) for h, v in zip(names, row, strict=False) if h != "timestamp"}

    return tags, rows(), total


def header(path: str | Path) -> list[str]:
    """The CSV's header row, stripped."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            first = next(csv.reader(fh), None)
    except OSError as exc:
        raise ConfigError(f"cannot read CSV {p}: {exc}", fix="check the path") from exc
    if not first:
        raise ConfigError(f"CSV {p} has no header row", fix="first row must name the tags")
    return [h.strip() for h in first]


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


def sample_period(path: str | Path) -> float | None:
    """Median spacing of the CSV's timestamps in seconds; None without a timestamp column or with under 2 rows."""
    p = Path(path)
    names = header(p)
    if "timestamp" not in names:
        return None
    col = names.index("timestamp")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        stamps = [_ts_ns(row[col], p, n) for n, row in enumerate(reader) if row]
    steps = np.diff(np.asarray(stamps, dtype=np.int64))
    steps = steps[steps > 0]
    return float(np.median(steps)) / NS if len(steps) else None


def data_period(paths: Sequence[str | Path], interval_s: float | None) -> float | None:
    """The one sample period of ``paths`` (their timestamps, else ``interval_s``); None when neither says.

    Raises:
        ConfigError: the files have different periods.
    """
    found = {str(p): sample_period(p) for p in paths}
    periods = {p: s if s is not None else interval_s for p, s in found.items()}
    known = [s for s in periods.values() if s is not None]
    if not known:
        return None
    if max(known) > min(known) * (1 + PERIOD_TOLERANCE) or len(known) < len(periods):
        listed = ", ".join(f"{p} {_s(s) if s is not None else 'no timestamps'}" for p, s in periods.items())
        raise ConfigError(
            f"the CSV files have different sample periods ({listed}): a model assembles one vector per cadence_s",
            fix="resample them to one period, or fit them separately",
        )
    return float(np.median(known))


def windowed(group: TagGroup) -> bool:
    """Whether the group combines consecutive vectors (moving average, shingle or feature window)."""
    return group.smoothing > 1 or group.shingle > 1 or window_of(group.features, group.feature_window) > 1


def window_text(group: TagGroup) -> str:
    """The group's windows in words, e.g. ``a moving average of 5 and a shingle of 2``."""
    parts = []
    if group.smoothing > 1:
        parts.append(f"a moving average of {group.smoothing}")
    if window_of(group.features, group.feature_window) > 1:
        parts.append(f"a feature window of {group.feature_window}")
    if group.shingle > 1:
        parts.append(f"a shingle of {group.shingle}")
    return " and ".join(parts)


def _s(seconds: float) -> str:
    return f"{seconds:g} s"


def resolve_cadences(config: AnomalyConfig, period_s: float | None) -> tuple[AnomalyConfig, list[str]]:
    """The configuration to fit with ``period_s``-spaced rows, and a note per cadence taken from the data.

    Raises:
        ConfigError: a group's explicit ``cadence_s`` is so much shorter than the rows' period that it never scores.
    """
    if period_s is None:
        return config, []
    groups, taken = [], []
    for g in config.groups:
        if g.mode == "cadence" and "cadence_s" not in g.model_fields_set and g.cadence_s != period_s:
            g = TagGroup.model_validate({**g.model_dump(exclude_unset=True), "cadence_s": period_s})
            taken.append(g.name)
        elif "cadence_s" in g.model_fields_set:
            check_period(g, period_s, "fit")
        groups.append(g)
    notes = [
        f"cadence_s not set in {', '.join(taken)}: it is the CSV's sample period, {_s(period_s)}; set "
        f"`cadence_s: {period_s:g}` in the component's groups too, or the component learns them again"
    ] if taken else []
    return config.model_copy(update={"groups": groups}), notes


def check_period(group: TagGroup, period_s: float | None, verb: str) -> None:
    """Refuse rows ``period_s`` apart for a windowed cadence group that would take each row as a gap.

    Raises:
        ConfigError: naming the group, its cadence, the rows' period and the fix.
    """
    if period_s is None or group.mode != "cadence" or not windowed(group):
        return
    if period_s > GAP_CADENCES * group.cadence_s:
        fix = (
            f"leave cadence_s out of the group (the fit takes the CSV's period) or set cadence_s: {period_s:g}; or "
            f"{verb} data sampled every {_s(group.cadence_s)}"
            if verb == "fit"
            else f"fit the model again on data at this period (without cadence_s, or with cadence_s: {period_s:g}), "
            f"or score data sampled every {_s(group.cadence_s)}"
        )
        raise ConfigError(
            f"group {group.name!r} assembles a vector every cadence_s {_s(group.cadence_s)} and combines "
            f"consecutive ones ({window_text(group)}), but the CSV's rows are {_s(period_s)} apart (median "
            f"timestamp spacing): every row would be a gap and the group would never score",
            fix=fix,
        )


def check_columns(config: AnomalyConfig, columns: list[str], path: str | Path) -> None:
    """One line naming the tags the CSV lacks, its header (``columns``, abridged) and the fix.

    Raises:
        ConfigError: a group names a tag that is not a column.
    """
    have = set(columns) - {"timestamp"}
    missing = list(dict.fromkeys(t for g in config.groups for t in g.tags if t not in have))
    if not missing:
        return
    groups = ", ".join(
        f"{g.name} {sum(t not in have for t in g.tags)} of {len(g.tags)}"
        for g in config.groups
        if any(t not in have for t in g.tags)
    )
    raise ConfigError(
        f"CSV {path} has no column for {len(missing)} tag(s) the groups name ({groups}): {_abridged(missing)}"
        f"{_hint(missing[0], have)}; its header has {len(columns)} columns: {_abridged(columns)}",
        fix="make the group members and the CSV header name the same tags (rename either)",
    )


def _hint(tag: str, columns: set[str]) -> str:
    """The column ``tag`` was probably meant to be (other case or spacing first, then a close spelling)."""
    folded = {c.lower().replace(" ", ""): c for c in columns}
    key = tag.lower().replace(" ", "")
    if key in folded:
        return f" (the header has {folded[key]!r}: names must match exactly, case included)"
    near = difflib.get_close_matches(key, sorted(folded), n=1, cutoff=0.8)
    return f" ({tag!r} is perhaps the column {folded[near[0]]!r})" if near else ""


def _abridged(names: list[str], head: int = 8, tail: int = 2) -> str:
    if len(names) <= head + tail + 1:
        return ", ".join(names)
    return ", ".join([*names[:head], f"... ({len(names) - head - tail} more)", *names[-tail:]])
