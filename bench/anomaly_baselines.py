"""Classic PCA process monitoring (Hotelling's T² and SPE / Q), scored by the same harness on the same runs.

The baseline a detection figure is compared with (issue 17): a textbook PCA monitor, fitted on the same normal
data as the forest, with the same false-alarm budget, scored on the same runs with the same protocol.

- Standardise every column on the normal fit data (mean, sample standard deviation; a column that does not vary
  gets a unit scale so it contributes nothing).
- Principal components of the standardised fit data: keep the fewest components whose eigenvalues explain at
  least ``VARIANCE`` (90 %; 33 of 52 on the TEP runs). 90 % is the usual textbook choice, fixed before any test
  run was scored; on the tuning split 85 % and 95 % give averages within 2 points of it (T² 76.9-79.5 %, SPE
  83.9-84.8 %; 99 % lifts T² to 83.5 % at twice the false alarms), so it was kept.
- T² = sum over kept components of score² / eigenvalue (the Mahalanobis distance inside the model plane);
  SPE (Q) = squared norm of the residual outside it.
- Threshold: the empirical ``1 - rate`` quantile of the statistic on the normal fit data itself, with ``rate`` the
  forest configuration's any-group budget (the sum of its groups' ``false_alarm_rate``), so both methods are given
  the same false-alarm rate to spend. Parametric limits (F / chi-square) assume Gaussian, independent samples,
  which TEP data are not; the empirical quantile is the fairer comparison.
- Alarm: the same raise/clear hysteresis as the forest groups (``raise_after`` consecutive points above the
  threshold raise it, ``clear_after`` below clear it), so the alarmed share is measured the same way.

The model is frozen (no updates): the classic method as published.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
VARIANCE = 0.90


def read(path: Path, columns: list[str]) -> tuple[Array, Array]:
    """Timestamps (s) and the ``columns`` of one run CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ts = np.array([float(r["timestamp"]) for r in rows])
    return ts, np.array([[float(r[c]) for c in columns] for r in rows])


@dataclass(frozen=True)
class PcaMonitor:
    """A fitted PCA monitor: scaling, loadings, eigenvalues and the two thresholds."""

    mean: Array
    scale: Array
    loadings: Array  # columns x kept components
    eigenvalues: Array
    t2_limit: float
    spe_limit: float

    @classmethod
    def fit(cls, normal: Array, rate: float, variance: float = VARIANCE) -> PcaMonitor:
        """Fit on normal rows; thresholds at the ``1 - rate`` quantile of each statistic on those rows."""
        mean = normal.mean(axis=0)
        scale = normal.std(axis=0, ddof=1)
        scale[scale <= 0] = 1.0
        z = (normal - mean) / scale
        eigenvalues, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, vectors = eigenvalues[order], vectors[:, order]
        share = np.cumsum(eigenvalues) / eigenvalues.sum()
        k = int(np.searchsorted(share, variance) + 1)
        monitor = cls(mean, scale, vectors[:, :k], eigenvalues[:k], 0.0, 0.0)
        t2, spe = monitor.statistics(normal)
        return cls(
            mean,
            scale,
            vectors[:, :k],
            eigenvalues[:k],
            float(np.quantile(t2, 1 - rate)),
            float(np.quantile(spe, 1 - rate)),
        )

    @property
    def components(self) -> int:
        """Components kept."""
        return int(self.loadings.shape[1])

    def statistics(self, rows: Array) -> tuple[Array, Array]:
        """T² and SPE of every row."""
        z = (rows - self.mean) / self.scale
        t = z @ self.loadings
        t2 = np.sum(t * t / self.eigenvalues, axis=1)
        residual = z - t @ self.loadings.T
        return t2, np.sum(residual * residual, axis=1)


def hysteresis(anomalous: NDArray[np.bool_], raise_after: int, clear_after: int) -> list[int]:
    """Alarm state per point, the forest groups' rule (raise after n above in a row, clear after m below)."""
    active, run, out = False, 0, []
    for a in anomalous:
        if bool(a) != active:
            run += 1
            if run >= (raise_after if a else clear_after):
                active, run = bool(a), 0
        else:
            run = 0
        out.append(int(active))
    return out


def alarms(monitor: PcaMonitor, rows: Array, raise_after: int, clear_after: int) -> dict[str, list[int]]:
    """Alarm states of the T² and SPE monitors for one run's rows."""
    t2, spe = monitor.statistics(rows)
    return {
        "pca_t2": hysteresis(t2 > monitor.t2_limit, raise_after, clear_after),
        "pca_spe": hysteresis(spe > monitor.spe_limit, raise_after, clear_after),
    }


def describe(monitor: PcaMonitor, rate: float) -> dict[str, Any]:
    """What was fitted, for the results file."""
    return {
        "variance": VARIANCE,
        "components": monitor.components,
        "columns": int(monitor.mean.shape[0]),
        "rate": rate,
        "t2_limit": monitor.t2_limit,
        "spe_limit": monitor.spe_limit,
    }
