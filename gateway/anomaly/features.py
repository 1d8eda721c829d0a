"""Features over time: a group's vector as levels plus short-window variability and differences.

Why (issue 17): a forest on levels sees where each tag *is*. A fault that leaves the mean in place but makes a tag
noisier (random variation, TEP IDV 8-12), a valve that sticks and then jumps (IDV 14, 15), or a slow drift whose
level stays inside the normal band for hours (IDV 13) moves the levels little; it moves how much a tag varies over
a few samples, or how far it went over them. With ``features: [level, std, delta]`` each member tag contributes,
over the last ``feature_window`` vectors (after the moving average, when ``smoothing`` > 1):

- ``level``: the newest value (what a levels-only group scores);
- ``std``: the standard deviation over the window (population, divisor ``feature_window``);
- ``delta``: newest minus oldest value of the window (the change over it).

The vector handed to the whitener is feature-major: all tags' first feature, then all tags' second, and so on, so
column ``j`` belongs to tag ``j % len(tags)``. Whitening then treats each feature column as a tag of its own, which
is what puts a std that is normally tiny on the same footing as a level.

The same function computes a window's features in a batch fit (every window of a contiguous segment at once) and
when streaming (the one window ending at the newest vector), on identically laid-out arrays, so a fitted model sees
the same numbers live. ``features: [level]`` (the default) passes vectors through untouched: no window, no delay,
and models fitted before this existed are unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from gateway.anomaly.featurespec import FEATURES, window_of, windowed

Array = NDArray[np.float64]


def of_windows(windows: Array, features: Sequence[str]) -> Array:
    """Feature rows of a stack of windows.

    Args:
        windows: shape (m, window, tags), oldest vector first in each window.
        features: names from :data:`FEATURES`.

    Returns:
        Shape (m, len(features) * tags), feature-major (see the module docstring).
    """
    w = np.ascontiguousarray(windows, dtype=np.float64)  # one layout for batch and streaming: identical sums
    parts = []
    for name in features:
        if name == "level":
            parts.append(w[:, -1, :])
        elif name == "std":
            parts.append(w.std(axis=1))
        elif name == "delta":
            parts.append(w[:, -1, :] - w[:, 0, :])
        else:
            raise ValueError(f"unknown feature {name!r}: use one of {', '.join(FEATURES)}")
    out: Array = np.concatenate(parts, axis=1)
    return out


def batch(segment: Array, features: Sequence[str], window: int) -> Array:
    """Feature rows of one contiguous segment: rows ``window - 1`` onwards (what :class:`FeatureWindow` yields)."""
    seg = np.asarray(segment, dtype=np.float64)
    if not windowed(features):
        return seg
    if len(seg) < window:
        return np.empty((0, seg.shape[1] * len(features)))
    views = sliding_window_view(seg, window, axis=0)  # (m, tags, window)
    return of_windows(views.transpose(0, 2, 1), features)


def per_tag(contributions: Array, tags: int) -> Array:
    """Sum the contributions of a tag's feature columns into that tag (feature-major layout)."""
    out: Array = np.asarray(contributions, dtype=np.float64).reshape(-1, tags).sum(axis=0)
    return out


class FeatureWindow:
    """Streaming features: the last ``window`` vectors, saved with the model so a restart continues.

    Like the moving average and the shingle, the window must hold consecutive vectors: the model resets it after a
    gap. With levels only it holds nothing and returns each vector as it is.
    """

    def __init__(self, features: Sequence[str], window: int, history: list[list[float]] | None = None) -> None:
        self.features = tuple(features)
        self.size = window_of(self.features, window)
        self._buf: deque[Array] = deque((np.asarray(h, dtype=np.float64) for h in history or []), maxlen=self.size)

    def push(self, x: Array) -> Array | None:
        """Add a vector; its feature vector once the window is full, else None."""
        if not windowed(self.features):
            return x
        self._buf.append(np.asarray(x, dtype=np.float64))
        if len(self._buf) < self.size:
            return None
        row: Array = of_windows(np.stack(list(self._buf))[None], self.features)[0]
        return row

    def reset(self) -> None:
        """Forget the window (after a gap)."""
        self._buf.clear()

    def state(self) -> list[list[float]]:
        """The vectors in the window, oldest first."""
        return [b.tolist() for b in self._buf]
