"""One group's model: learning window, whitening, forest, threshold, gated updates, alarm hysteresis, attribution.

Lifecycle: LEARNING (collect ``training_points`` valid vectors from the live stream, or get them from
:meth:`GroupModel.fit`) -> SCORING. Fitting cross-fits the threshold: the window is cut into ``calibration_folds``
blocks of time, each block is scored by a whitening transform and forest fitted on the other blocks, point by point
with the gated updates :meth:`GroupModel.step` makes live (a frozen replay left the streaming rate at ~0.85x), and
the threshold is set from all these out-of-sample scores (:mod:`gateway.anomaly.calibration`: a peaks-over-threshold
tail, with the false-alarm rate it is expected to give and a ~90 % interval). The model that then scores is fitted
on the whole window with the same settings; every forest's scores are put on one scale first (:func:`probe_scale`),
since another forest's scores run 1-3 % higher or lower, a factor of 1.5-2 in the rate on thin tails.
``false_alarm_rate`` is calibrated as the rate of *points* above the threshold,
not the share of time in alarm: hysteresis makes the latter about equal or lower, and calibrating it directly set
thresholds that gave 1.8-9x the configured alarm share on the TEP tuning runs (docs/anomaly.md, thresholds). Scores
are reported divided by that threshold, so 1.0 is the alarm line for every group and backend.

Scoring a point: score first, then update the forest only if the point is below the threshold *and* no alarm is
raised (gated updates): a forest that keeps learning during a fault absorbs it (NOTES 11). ``updates="frozen"``
never updates (offline evaluation of a fixed model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from gateway.anomaly.assembler import NS, Shingler, Smoother, Vector
from gateway.anomaly.backends import Forest, load_forest, make_forest
from gateway.anomaly.calibration import Calibration, calibrate, threshold_for
from gateway.anomaly.config import TagGroup, fit_vectors, min_block_vectors, min_training_vectors
from gateway.anomaly.features import FeatureWindow, per_tag
from gateway.anomaly.features import batch as feature_rows
from gateway.anomaly.featurespec import window_of
from gateway.anomaly.transform import Whitener
from gateway.counters import current_names
from gateway.errors import ConfigError

Array = NDArray[np.float64]
Updates = Literal["gated", "frozen"]
COUNTERS = ("vectors_scored", "anomalous_vectors_scored", "model_updates")  # per group, saved with the model
PROBE_POINTS = 2000  # the scale's noise of its own is common to all forests of a group (the same points)


@dataclass(frozen=True, slots=True)
class StepResult:
    """Outcome of scoring one vector.

    Attributes:
        ts_ns: time of the vector.
        score: forest score divided by the threshold (1.0 = threshold).
        anomalous: score above the threshold.
        alarm: alarm state after this point (hysteresis applied).
        changed: the alarm was raised or cleared by this point.
        top_tags: (tag, share of contribution) of the most contributing tags, for anomalous points.
    """

    ts_ns: int
    score: float
    anomalous: bool
    alarm: bool
    changed: bool
    top_tags: tuple[tuple[str, float], ...] = ()


@dataclass
class AlarmState:
    """Hysteresis: raise after ``raise_after`` anomalous points in a row, clear after ``clear_after`` normal."""

    active: bool = False
    run: int = 0  # consecutive points disagreeing with the current state

    def feed(self, anomalous: bool, raise_after: int, clear_after: int) -> bool:
        """Feed one point; return True when the state changed."""
        if anomalous != self.active:
            self.run += 1
            if self.run >= (raise_after if anomalous else clear_after):
                self.active, self.run = anomalous, 0
                return True
        else:
            self.run = 0
        return False


@dataclass
class GroupModel:
    """Everything one group needs to score, and everything a restart must restore."""

    group: TagGroup
    whitener: Whitener | None = None
    forest: Forest | None = None
    threshold: float = 0.0
    calibration: Calibration | None = None  # how the threshold was set; None for a model saved before it was kept
    alarm: AlarmState = field(default_factory=AlarmState)
    learning: list[list[float]] = field(default_factory=list)
    last_ts_ns: int | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    shingler: Shingler = field(init=False)
    smoother: Smoother = field(init=False)
    features: FeatureWindow = field(init=False)

    def __post_init__(self) -> None:
        self.shingler = Shingler(self.group.shingle)
        self.smoother = Smoother(self.group.smoothing)
        self.features = FeatureWindow(self.group.features, self.group.feature_window)

    @property
    def state(self) -> str:
        """``learning`` until fitted, then ``scoring``."""
        return "scoring" if self.forest is not None else "learning"

    def fit(self, segments: list[Array]) -> None:
        """Fit on normal data: one or more time-contiguous segments (rows = vectors in tag order).

        Raises:
            ConfigError: too little data for the transform, the forest and the calibration.
        """
        g = self.group
        segments = [_moving_average(np.asarray(s, dtype=np.float64), g.smoothing) for s in segments]
        segments = [feature_rows(s, g.features, g.feature_window) for s in segments]
        segments = [s for s in segments if len(s)]
        total = sum(len(s) for s in segments)
        folds = _fold_count(g, total)
        if folds < 2:
            raise ConfigError(
                f"training window too short for group {g.name!r}: {total} vectors, need at least "
                f"{min_training_vectors(g)} (two calibration blocks of {min_block_vectors(g)} and "
                f"{fit_vectors(g)} to fit on)",
                fix="supply more normal data (or lower shingle / fewer tags)",
            )
        blocks = _blocks(segments, folds, min_block_vectors(g))
        scores: list[Array] = []  # per block, its out-of-sample scores over the scale of the forest that gave them
        for k, block in enumerate(blocks):
            whitener, forest = self._fit_forest([p for j, b in enumerate(blocks) if j != k for p in b])
            scale = probe_scale(forest, whitener.dims * g.shingle, g.forest.seed)  # before the replay changes it
            scores.append(self._replay(whitener, forest, block) / scale)
        self.whitener, self.forest = self._fit_forest(segments)
        scale = probe_scale(self.forest, self.whitener.dims * g.shingle, g.forest.seed)
        self.calibration = calibrate(scores, g.false_alarm_rate, seed=g.forest.seed, scale=scale)
        self.threshold = max(self.calibration.threshold, 1e-12)
        self.learning = []
        self.shingler.reset()
        self.smoother.reset()
        self.features.reset()
        self.alarm = AlarmState()
        self.last_ts_ns = None

    def _fit_forest(self, pieces: list[Array]) -> tuple[Whitener, Forest]:
        """A whitener and a forest fitted on ``pieces`` (contiguous runs of vectors, in time order)."""
        g = self.group
        whitener = Whitener.fit(np.vstack(pieces), g.eigen_floor)
        forest = make_forest(g.forest, whitener.dims * g.shingle)
        for piece in pieces:
            for x in _shingle(whitener, piece, g.shingle):
                forest.update(x)
        return whitener, forest

    def _replay(self, whitener: Whitener, forest: Forest, block: list[Array]) -> Array:
        """Scores of a left-out block as :meth:`step` gives them live: each point scored, then learned when under
        the gate and no alarm is raised, so the threshold is set on scores of the process that will score.

        The gate is the threshold the block's scores by the forest as fitted would set (the final one needs every
        block): it only decides which of the highest points are learned.
        """
        g = self.group
        pieces = [_shingle(whitener, p, g.shingle) for p in block]
        gate = threshold_for(np.array([forest.score(x) for points in pieces for x in points]), g.false_alarm_rate)
        out = []
        for points in pieces:
            alarm = AlarmState()  # a piece is a recording of its own
            for x in points:
                raw = forest.score(x)
                if raw < g.update_below * gate and not alarm.active:
                    forest.update(x)
                alarm.feed(raw > gate, g.raise_after, g.clear_after)
                out.append(raw)
        return np.array(out)

    def step(self, vec: Vector, updates: Updates = "gated") -> StepResult | None:
        """Learn from or score one vector. None while learning or while the shingle fills."""
        g = self.group
        if self.forest is None or self.whitener is None:
            self.learning.append(vec.values.tolist())
            if len(self.learning) >= g.training_points:
                self.fit([np.asarray(self.learning)])
            return None
        if g.mode == "cadence" and self.last_ts_ns is not None and vec.ts_ns - self.last_ts_ns > 1.5 * g.cadence_s * NS:
            self.shingler.reset()  # a gap: shingle and average must hold consecutive vectors
            self.smoother.reset()
            self.features.reset()
        self.last_ts_ns = vec.ts_ns
        values = self.smoother.push(vec.values)
        if values is None:
            return None
        values = self.features.push(values)
        if values is None:
            return None
        point = self.shingler.push(self.whitener.apply(values))
        if point is None:
            return None
        raw = self.forest.score(point)
        score = raw / self.threshold
        anomalous = score > 1.0
        if updates == "gated" and score < g.update_below and not self.alarm.active:
            self.forest.update(point)
            self.counters["model_updates"] += 1
        changed = self.alarm.feed(anomalous, g.raise_after, g.clear_after)
        self.counters["vectors_scored"] += 1
        self.counters["anomalous_vectors_scored"] += int(anomalous)
        top = self.attribute(values) if anomalous or self.alarm.active else ()
        return StepResult(vec.ts_ns, score, anomalous, self.alarm.active, changed, top)

    def attribute(self, values: Array) -> tuple[tuple[str, float], ...]:
        """The ``top_tags`` tags contributing most to the whitened distance of ``values``, with their shares.

        ``values`` is the whitener's input; with features over time (:mod:`gateway.anomaly.features`) a tag's
        contribution is the sum over its features (level, std, delta), so the attribution still names member tags.
        """
        assert self.whitener is not None
        c = per_tag(self.whitener.contributions(values), len(self.group.tags))
        total = float(c.sum()) or 1.0
        order = np.argsort(c)[::-1][: self.group.top_tags]
        return tuple((self.group.tags[i], round(float(c[i]) / total, 4)) for i in order)

    def to_state(self) -> dict[str, Any]:
        """JSON-able state; the forest goes separately as bytes (see :meth:`forest_bytes`)."""
        return {
            "fingerprint": self.group.fingerprint(),
            "whitener": self.whitener.to_state() if self.whitener else None,
            "backend": self.forest.backend if self.forest else None,
            "threshold": self.threshold,
            "calibration": self.calibration.to_state() if self.calibration else None,
            "alarm": {"active": self.alarm.active, "run": self.alarm.run},
            "learning": self.learning,
            "shingle": self.shingler.state(),
            "smoothing": self.smoother.state(),
            "features": self.features.state(),
            "last_ts_ns": self.last_ts_ns,
            "counters": dict(self.counters),
        }

    def forest_bytes(self) -> bytes | None:
        """The forest snapshot, or None while learning."""
        return self.forest.to_bytes() if self.forest else None

    @classmethod
    def from_state(cls, group: TagGroup, state: dict[str, Any], forest: bytes | None) -> GroupModel:
        """Rebuild a model saved by :meth:`to_state` / :meth:`forest_bytes`.

        Raises:
            ValueError: the state does not fit the group (names the field), so that a hand-edited file is refused
                at restore instead of failing at every point scored.
        """
        _check_shapes(group, state)
        m = cls(group)
        if state.get("whitener") is not None and forest is not None:
            m.whitener = Whitener.from_state(state["whitener"])
            m.forest = load_forest(str(state["backend"]), forest)
        m.threshold = float(state["threshold"])
        m.calibration = Calibration.from_state(state.get("calibration"))
        m.alarm = AlarmState(bool(state["alarm"]["active"]), int(state["alarm"]["run"]))
        m.learning = [list(map(float, r)) for r in state["learning"]]
        m.shingler = Shingler(group.shingle, state["shingle"])
        m.smoother = Smoother(group.smoothing, state["smoothing"])
        m.features = FeatureWindow(group.features, group.feature_window, state.get("features"))  # absent before
        m.last_ts_ns = state["last_ts_ns"]
        # a model saved by the previous version has the old counter names
        m.counters.update({k: int(v) for k, v in current_names(state["counters"]).items()})
        return m


def _check_shapes(group: TagGroup, state: dict[str, Any]) -> None:
    """Every vector in ``state`` has one value per tag of ``group`` (per tag and feature after the feature window),
    and windows hold no more than their size."""
    n = len(group.tags)
    cols = n * len(group.features)  # the whitener's input and the shingle's rows
    what = f"the group's {n} tags" if cols == n else f"the group's {n} tags x {len(group.features)} features"
    w = state.get("whitener")
    if w is not None:
        for key in ("mean", "scale", "eigenvalues"):
            if len(w[key]) != cols:
                raise ValueError(f"whitener.{key} has {len(w[key])} values for {what}")
        if len(w["rotation"]) != cols or any(len(row) != cols for row in w["rotation"]):
            raise ValueError(f"whitener.rotation is not {cols} x {cols} ({what})")
        if state.get("backend") not in ("krcf", "rrcf"):
            raise ValueError(f"backend {state.get('backend')!r} is not krcf or rrcf")
        if not float(state["threshold"]) > 0:
            raise ValueError(f"threshold {state['threshold']!r} of a fitted group is not above 0")
    windows = (
        ("learning", None, n),
        ("shingle", group.shingle, cols),
        ("smoothing", group.smoothing, n),
        ("features", window_of(group.features, group.feature_window), n),
    )
    for key, most, width in windows:
        rows = state.get(key, [])  # "features" is absent from models saved before it existed
        if any(len(row) != width for row in rows):
            raise ValueError(f"{key} holds rows that do not have {width} values ({what})")
        if most is not None and len(rows) > most:
            raise ValueError(f"{key} holds {len(rows)} rows, more than its size {most}")


def probe_scale(forest: Forest, dims: int, seed: int) -> float:
    """The forest's mean score over ``PROBE_POINTS`` standard normal points (the same points for every forest of
    the group: seeded), which is what whitened normal data looks like to it.

    Why: forests fitted on the same data with other random trees score it 1-3 % higher or lower across the board,
    and on a thin tail that is a factor of 1.5-2 in the rate at a 0.1-0.3 % threshold. The threshold comes from the
    cross-fitting forests' scores and another forest scores, so each forest's scores are put on a common scale
    through its scores of the same probe points: on the TEP tuning runs, for `plant`, this probe's ratio between the
    scoring forest and the folds' followed their ratio on unseen normal runs (correlation 0.73 over 8 seeds).
    """
    points = np.random.default_rng(seed).standard_normal((PROBE_POINTS, dims))
    return float(np.mean([forest.score(x) for x in points]))


def _fold_count(group: TagGroup, total: int) -> int:
    """Calibration blocks for ``total`` vectors: ``calibration_folds`` or fewer, each of at least
    :func:`min_block_vectors`, the rest always enough to fit on; below 2 the window is too short."""
    k = min(group.calibration_folds, total // min_block_vectors(group))
    return k if k >= 2 and total - -(-total // k) >= fit_vectors(group) else 0


def _blocks(segments: list[Array], k: int, smallest: int) -> list[list[Array]]:
    """Cut contiguous segments into ``k`` blocks of consecutive rows, about equal in size.

    A cut within half a block of the end of a segment moves there (keeping every block at least ``smallest``
    long): separate recordings then land in separate blocks, so that a block is scored by a model that never saw
    its recording, as new data will be. A block that spans two segments holds one piece of each (pieces are
    contiguous, so shingles never span a gap).
    """
    total = sum(len(s) for s in segments)
    ends = np.cumsum([len(s) for s in segments])[:-1]
    edges = [0]
    for i in range(1, k):
        edge = round(total * i / k)
        near = int(ends[np.argmin(np.abs(ends - edge))]) if len(ends) else edge
        if abs(near - edge) <= total / (2 * k) and near - edges[-1] >= smallest and total - near >= (k - i) * smallest:
            edge = near
        edges.append(edge)
    edges.append(total)
    blocks: list[list[Array]] = [[] for _ in range(k)]
    offset = 0
    for seg in segments:
        for i in range(k):
            lo, hi = max(edges[i], offset), min(edges[i + 1], offset + len(seg))
            if hi > lo:
                blocks[i].append(seg[lo - offset : hi - offset])
        offset += len(seg)
    return blocks


def _shingle(whitener: Whitener, piece: Array, size: int) -> list[Array]:
    """Forest points of one contiguous piece: whitened, then ``size`` consecutive vectors concatenated."""
    s = Shingler(size)
    return [p for p in (s.push(row) for row in whitener.apply(piece)) if p is not None]


def _moving_average(seg: Array, window: int) -> Array:
    """Rows ``window - 1`` onwards of the trailing moving average (what :class:`Smoother` yields in streaming)."""
    if window <= 1 or len(seg) < window:
        return seg if window <= 1 else seg[:0]
    c = np.cumsum(np.vstack([np.zeros((1, seg.shape[1])), seg]), axis=0)
    out: Array = (c[window:] - c[:-window]) / window
    return out
