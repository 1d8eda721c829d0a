"""Whitening transform fitted on normal data, and the attribution that goes with it.

Why whitening (NOTES 11): a forest on raw or merely standardised tags sees mostly the few directions in which a
plant varies a lot, and a fault that breaks a correlation (two tags that always move together, now apart) hides in
a direction of tiny normal variance. Rotating onto the principal axes of normal data and scaling every axis to unit
variance makes every direction equally "loud", so the forest can isolate such points.

The eigenvalue floor: an axis with (near) zero normal variance (a constant tag, two tags that are exact copies)
would be divided by ~0 and turn noise into huge values. Eigenvalues below ``eigen_floor * largest`` are raised to
that value; a constant tag that starts moving is then still loud, but finite. Constant tags are standardised with a
scale of 1 (their standard deviation is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.errors import ConfigError

Array = NDArray[np.float64]


@dataclass
class Whitener:
    """standardise -> rotate onto principal axes -> unit variance per axis.

    Attributes:
        mean: per-tag mean of the training data.
        scale: per-tag standard deviation (1.0 for constant tags).
        rotation: eigenvectors (columns) of the standardised covariance.
        eigenvalues: floored eigenvalues, one per column of ``rotation``.
    """

    mean: Array
    scale: Array
    rotation: Array
    eigenvalues: Array
    _m: Array | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, data: Array, eigen_floor: float) -> Whitener:
        """Fit on normal data (rows are samples, columns tags).

        Raises:
            ConfigError: fewer rows than twice the columns (the covariance would be meaningless) or non-finite data.
        """
        n, d = data.shape
        if n < max(2 * d, 10):
            raise ConfigError(
                f"training window too short: {n} vectors for {d} tags",
                fix=f"collect at least {max(2 * d, 10)} vectors (raise training_points or supply more normal data)",
            )
        if not np.all(np.isfinite(data)):
            raise ConfigError("training data contains NaN or infinite values", fix="drop or repair those rows")
        mean = data.mean(axis=0)
        scale = data.std(axis=0)
        scale[scale <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
        z = (data - mean) / scale
        cov = np.atleast_2d(np.cov(z, rowvar=False))
        eigenvalues, rotation = np.linalg.eigh(cov)
        top = max(float(eigenvalues.max()), 1e-12)
        eigenvalues = np.maximum(eigenvalues, eigen_floor * top)
        return cls(mean, scale, rotation, eigenvalues)

    @property
    def dims(self) -> int:
        """Number of input tags (equal to the number of output axes)."""
        return int(self.mean.shape[0])

    def apply(self, x: Array) -> Array:
        """Whiten one vector or a matrix of row vectors."""
        z = (x - self.mean) / self.scale
        out: Array = (z @ self.rotation) / np.sqrt(self.eigenvalues)
        return out

    def contributions(self, x: Array) -> Array:
        """Reconstruction-based contribution of each tag to the squared whitened distance of ``x``.

        For tag i: ``(e_i' M z)^2 / M_ii`` with ``M = R diag(1/eig) R'`` and ``z`` the standardised vector: how much
        the distance would drop if tag i alone were replaced by its best estimate from the others. Unlike smearing
        the distance over tags through the loadings, this peaks at the tag that moved even when it is strongly
        correlated with others, which is what an operator needs to be told.
        """
        z = (x - self.mean) / self.scale
        m = self._precision()
        mz = m @ z
        out: Array = mz**2 / np.diag(m)
        return out

    def _precision(self) -> Array:
        """``R diag(1/eig) R'``, computed once (the inverse of the floored covariance)."""
        if self._m is None:
            self._m = (self.rotation / self.eigenvalues) @ self.rotation.T
        return self._m

    def to_state(self) -> dict[str, Any]:
        """Plain lists for the model manifest."""
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "rotation": self.rotation.tolist(),
            "eigenvalues": self.eigenvalues.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Whitener:
        """Inverse of :meth:`to_state`."""
        return cls(
            np.asarray(state["mean"], dtype=np.float64),
            np.asarray(state["scale"], dtype=np.float64),
            np.asarray(state["rotation"], dtype=np.float64),
            np.asarray(state["eigenvalues"], dtype=np.float64),
        )
