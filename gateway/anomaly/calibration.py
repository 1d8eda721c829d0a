"""Thresholds from out-of-sample scores: a peaks-over-threshold tail, and the rate the threshold gives.

Why not the empirical quantile: a ``false_alarm_rate`` of 0.3 % of a few hundred calibration points is one or two
points, so the threshold is whichever score happened to be the largest, and it moves with the forest's seed. Above
a high empirical quantile ``u`` (the ``TAIL_QUANTILE`` of the scores, at least ``MIN_EXCEEDANCES`` points over it)
the excesses of almost any continuous distribution are close to a generalized Pareto distribution (GPD,
Pickands-Balkema-de Haan), so the far tail is estimated from the ~10 % of points over ``u`` instead of the one or
two over the target::

    P(X > x) = zeta * (1 + shape * (x - u) / scale) ** (-1 / shape)      for x > u, zeta = share of points over u

The GPD is fitted with Zhang & Stephens' (2009) estimator (a likelihood-weighted average over a fixed grid of the
profile parameter: numpy only, no iteration that can fail to converge, defined for every shape). The fit is not
trusted, and the empirical quantile is used instead (``method="empirical"``, the reason in ``note``), when there are
too few exceedances, when the target is not in the tail at all, when the shape is implausible, or when the GPD does
not fit the exceedances (Kolmogorov-Smirnov distance).

Uncertainty: the scores come in ``K`` blocks of time (the cross-fitting folds). Resampling whole blocks with
replacement, refitting the tail and reading the rate each refit gives at the chosen threshold gives a ~90 %
interval of the rate on new normal data that includes the variation between periods of normal operation, not only
the sampling noise of one period.

What the rate counts: points above the threshold (``level="point"``). Alarms need ``raise_after`` such points in a
row and last ``clear_after`` more, so the share of time in alarm is lower (0.1-0.4 of the rate on the TEP tuning
runs: most points over a threshold are isolated). Calibrating that share directly was measured twice on the TEP
tuning runs and rejected (docs/anomaly.md, thresholds): the fit window holds only a handful of alarms at such rates,
so the threshold moved with the forest seed by a factor of 3 on new normal runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
TAIL_QUANTILE = 0.9  # the tail starts here: ~10 % of the points feed the GPD
MIN_EXCEEDANCES = 30  # below this the GPD's two parameters are not estimated with any confidence
MAX_SHAPE = 1.0  # shape >= 1: infinite mean; a forest score with such a tail is not a tail the GPD should extrapolate
MIN_SHAPE = -1.0  # shape <= -1: the likelihood is unbounded; the estimate is meaningless
KS_LIMIT = 1.63  # x / sqrt(n): the 1 % level of Kolmogorov-Smirnov for known parameters, lenient for fitted ones
BOOTSTRAP = 300
INTERVAL = (0.05, 0.95)


@dataclass(frozen=True, slots=True)
class Tail:
    """A generalized Pareto tail above ``u``: ``P(X > x) = zeta * (1 + shape * (x - u) / scale) ** (-1 / shape)``."""

    u: float
    zeta: float
    shape: float
    scale: float
    exceedances: int

    def rate(self, x: float) -> float:
        """Probability of exceeding ``x`` (valid for ``x >= u``)."""
        z = (x - self.u) / self.scale
        if abs(self.shape) < 1e-9:
            return self.zeta * math.exp(-z)
        base = 1.0 + self.shape * z
        return 0.0 if base <= 0 else float(self.zeta * base ** (-1.0 / self.shape))

    def quantile(self, rate: float) -> float:
        """The value exceeded with probability ``rate`` (``rate <= zeta``)."""
        r = self.zeta / rate
        if abs(self.shape) < 1e-9:
            return self.u + self.scale * math.log(r)
        return self.u + self.scale / self.shape * (math.pow(r, self.shape) - 1.0)


def fit_gpd(excess: Array) -> tuple[float, float]:
    """(shape, scale) of a GPD fitted to positive excesses (Zhang & Stephens 2009).

    The profile parameter ``theta = -shape / scale`` is averaged over a grid below ``1 / max(excess)``, each grid
    point weighted by its profile likelihood; shape and scale follow from ``theta`` in closed form.
    """
    x = np.sort(np.asarray(excess, dtype=np.float64))
    n = len(x)
    m = 20 + int(math.sqrt(n))
    quartile = max(float(x[max(int(n / 4 + 0.5) - 1, 0)]), 1e-300)
    j = np.arange(1, m + 1, dtype=np.float64)
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    k = -np.log1p(-np.outer(theta, x)).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = n * (np.log(theta / k) + k - 1.0)
    loglik = np.where(np.isfinite(loglik), loglik, -np.inf)
    with np.errstate(over="ignore", invalid="ignore"):  # a grid point far below the best gets weight 1/inf = 0
        weights = np.nan_to_num(1.0 / np.exp(loglik[None, :] - loglik[:, None]).sum(axis=1))
    t = float((theta * weights).sum())
    if abs(t) < 1e-12 * (1.0 / x[-1]):  # exponential limit: shape 0, scale = mean excess
        return 0.0, float(x.mean())
    shape = float(np.log1p(-t * x).mean())
    return shape, -shape / t


def fit_tail(values: Array, tail_quantile: float = TAIL_QUANTILE) -> Tail | None:
    """The GPD tail of ``values`` over their ``tail_quantile``, or None with fewer than ``MIN_EXCEEDANCES`` points."""
    v = np.asarray(values, dtype=np.float64)
    u = float(np.quantile(v, tail_quantile))
    excess = v[v > u] - u
    if len(excess) < MIN_EXCEEDANCES:
        return None
    shape, scale = fit_gpd(excess)
    return Tail(u, len(excess) / len(v), shape, max(scale, 1e-300), len(excess))


def ks_distance(tail: Tail, values: Array) -> float:
    """Kolmogorov-Smirnov distance between the exceedances of ``values`` over ``tail.u`` and the fitted GPD."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[x > tail.u]
    n = len(x)
    model = 1.0 - np.array([tail.rate(float(v)) for v in x]) / tail.zeta
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - model), np.max(model - (i - 1) / n)))


@dataclass(frozen=True, slots=True)
class Calibration:
    """How a group's threshold was set, and the false-alarm rate it is expected to give on new normal data.

    Attributes:
        method: ``pot`` (GPD tail over a high quantile) or ``empirical`` (plain quantile; ``note`` says why).
        points: out-of-sample values the threshold was calibrated on.
        threshold: the raw forest-score threshold.
        target_rate: the configured ``false_alarm_rate``.
        expected_rate: the rate the fitted tail gives at ``threshold`` (the target unless it had to be clamped).
        rate_low: lower end of the ~90 % interval of the rate on new normal data (block bootstrap).
        rate_high: upper end of that interval.
        folds: time blocks the scores came from (cross-fitting folds; the bootstrap resamples them).
        level: ``alarm`` (calibrated so that the share of time in alarm matches the target) or ``point``.
        shape: GPD shape of the tail (None for ``empirical``).
        tail_from: where the tail starts (``u``, raw score; None for ``empirical``).
        exceedances: points over ``tail_from`` the GPD was fitted to.
        note: why the fallback was taken, or what to know about this calibration; empty when nothing.
        scale: the scoring forest's score scale (:func:`gateway.anomaly.model.probe_scale`) that ``threshold`` and
            ``tail_from`` were multiplied by: the blocks' scores came divided by their own forests' (1.0 for a
            model saved before).
    """

    method: str
    points: int
    threshold: float
    target_rate: float
    expected_rate: float
    rate_low: float
    rate_high: float
    folds: int = 1
    level: str = "point"
    shape: float | None = None
    tail_from: float | None = None
    exceedances: int = 0
    note: str = ""
    scale: float = 1.0

    def to_state(self) -> dict[str, Any]:
        """JSON-able dict for the model manifest."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Calibration | None:
        """Inverse of :meth:`to_state`; None for a model saved before calibrations were recorded."""
        if state is None:
            return None
        known = {f: state[f] for f in cls.__dataclass_fields__ if f in state}
        return cls(**known)


def calibrate(
    blocks: list[Array], target_rate: float, *, level: str = "point", seed: int = 0, scale: float = 1.0
) -> Calibration:
    """The threshold exceeded with probability ``target_rate`` by the values in ``blocks``, with its uncertainty.

    Args:
        blocks: out-of-sample values, one array per block of time (cross-fitting fold).
        target_rate: the rate to aim at.
        level: recorded in the result (what the values are: point scores or the alarm statistic).
        seed: seed of the bootstrap, so that a fit is reproducible.
        scale: the values are scores divided by their forest's scale; the threshold is for a forest of this scale.
    """
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks if len(b)]
    pooled = np.concatenate(blocks)
    n = len(pooled)
    threshold, expected, tail, note = _threshold(pooled, target_rate)
    method = "empirical" if note else "pot"
    low, high = _interval(blocks, threshold, method == "pot", seed)
    return Calibration(
        method=method,
        points=n,
        threshold=threshold * scale,
        target_rate=target_rate,
        expected_rate=expected,
        rate_low=low,
        rate_high=high,
        folds=len(blocks),
        level=level,
        shape=tail.shape if method == "pot" and tail else None,
        tail_from=tail.u * scale if method == "pot" and tail else None,
        exceedances=tail.exceedances if method == "pot" and tail else 0,
        note=note,
        scale=scale,
    )


def threshold_for(values: Array, target_rate: float) -> float:
    """The threshold :func:`calibrate` would set on ``values``, without the interval (cheap: no bootstrap)."""
    return _threshold(np.asarray(values, dtype=np.float64), target_rate)[0]


def _threshold(pooled: Array, target_rate: float) -> tuple[float, float, Tail | None, str]:
    """(threshold, the rate expected there, the tail, why the tail was not used: empty when it was)."""
    tail = fit_tail(pooled)
    note = _doubt(tail, pooled, target_rate)
    if tail is not None and not note:
        threshold = tail.quantile(target_rate)
        return threshold, tail.rate(threshold), tail, ""
    threshold = float(np.quantile(pooled, 1.0 - target_rate))
    return threshold, float(np.mean(pooled > threshold)) if len(pooled) else target_rate, tail, note


def _doubt(tail: Tail | None, pooled: Array, target_rate: float) -> str:
    """Why the GPD fit is not to be used here; empty when it is credible."""
    if tail is None:
        return (f"{len(pooled)} points give fewer than {MIN_EXCEEDANCES} over their {TAIL_QUANTILE:.0%} quantile: "
                "too few for a tail fit")
    if target_rate >= tail.zeta:
        return f"the target rate {target_rate:g} is not in the tail (over the {TAIL_QUANTILE:.0%} quantile)"
    if not MIN_SHAPE < tail.shape < MAX_SHAPE:
        return f"GPD shape {tail.shape:.2f} outside ({MIN_SHAPE:g}, {MAX_SHAPE:g}): the tail is not credible"
    d = ks_distance(tail, pooled)
    if d > KS_LIMIT / math.sqrt(tail.exceedances):
        return f"the GPD does not fit the {tail.exceedances} exceedances (Kolmogorov-Smirnov distance {d:.3f})"
    return ""


def _interval(blocks: list[Array], threshold: float, pot: bool, seed: int) -> tuple[float, float]:
    """~90 % interval of the exceedance rate of ``threshold``, resampling whole blocks with replacement."""
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(BOOTSTRAP):
        sample = np.concatenate([blocks[i] for i in rng.integers(0, len(blocks), len(blocks))])
        tail = fit_tail(sample) if pot else None
        if tail is not None and threshold > tail.u:
            rates.append(tail.rate(threshold))
        else:
            rates.append(float(np.mean(sample > threshold)))
    low, high = np.quantile(rates, INTERVAL)
    return float(low), float(high)
