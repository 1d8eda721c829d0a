"""Random cut forest backends behind one small interface.

Contract for every backend: ``score(point)`` never changes the forest; ``update(point)`` adds the point to the
sample (evicting per the backend's sampler); ``to_bytes()`` / ``load_forest()`` round-trip everything, including the
random generator, so a restored forest scores and updates exactly as the original would have.

Scores are not comparable between backends (NOTES 11); thresholds are always calibrated per group and backend.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from gateway.anomaly.config import ForestSettings
from gateway.errors import ConfigError

Array = NDArray[np.float64]


class Forest(Protocol):
    """What the model needs from a random cut forest."""

    backend: str

    def score(self, point: Array) -> float:
        """Anomaly score of ``point`` against the current sample; does not change the forest."""
        ...

    def update(self, point: Array) -> None:
        """Add ``point`` to the forest's sample."""
        ...

    def to_bytes(self) -> bytes:
        """Serialise the whole forest, random state included."""
        ...


class KrcfForest:
    """AWS's Rust RCF through ``krcf``: the default. We shingle ourselves, so the forest sees plain points."""

    backend = "krcf"

    def __init__(self, forest: Any) -> None:
        self._forest = forest

    @classmethod
    def create(cls, settings: ForestSettings, dims: int) -> KrcfForest:
        """A new empty forest for ``dims``-dimensional points."""
        import krcf

        options: krcf.RandomCutForestOptions = {
            "dimensions": dims,
            "shingle_size": 1,
            "num_trees": settings.trees,
            "sample_size": settings.samples_per_tree,
            "random_seed": settings.seed,
            "output_after": 1,
        }
        return cls(krcf.RandomCutForest(options))

    def score(self, point: Array) -> float:
        """AWS score: about 1 for inliers, larger for outliers."""
        return float(self._forest.score(point))

    def update(self, point: Array) -> None:
        """Offer the point to every tree's time-decayed reservoir sampler."""
        self._forest.update(point)

    def to_bytes(self) -> bytes:
        """krcf's own msgpack snapshot (includes the samplers' random state)."""
        return bytes(self._forest.to_msgpack())

    @classmethod
    def from_bytes(cls, data: bytes) -> KrcfForest:
        """Restore a snapshot made by :meth:`to_bytes`."""
        import krcf

        return cls(krcf.RandomCutForest.from_msgpack(data))


class RrcfForest:
    """``rrcf`` (pure Python): each tree keeps a sliding window of the last ``samples_per_tree`` points.

    rrcf scores a point by inserting it; :meth:`score` therefore inserts under a temporary key, reads the collusive
    displacement and removes the point again, leaving the tree as it was (the random draws advance; they are part
    of the saved state).
    """

    backend = "rrcf"
    _PROBE = -1

    def __init__(self, trees: list[Any], rng: np.random.RandomState, window: int, next_index: int) -> None:
        self._trees = trees
        self._rng = rng
        self._window = window
        self._next = next_index

    @classmethod
    def create(cls, settings: ForestSettings, dims: int) -> RrcfForest:
        """A new empty forest (``dims`` is implied by the first point)."""
        import rrcf

        rng = np.random.RandomState(settings.seed)
        trees = [rrcf.RCTree(random_state=rng) for _ in range(settings.trees)]
        return cls(trees, rng, settings.samples_per_tree, 0)

    def score(self, point: Array) -> float:
        """Mean collusive displacement over trees (0 while the forest is empty)."""
        if self._next == 0:
            return 0.0
        total = 0.0
        for tree in self._trees:
            tree.insert_point(point, index=self._PROBE)
            total += float(tree.codisp(self._PROBE))
            tree.forget_point(self._PROBE)
        return total / len(self._trees)

    def update(self, point: Array) -> None:
        """Insert the point in every tree, forgetting the oldest once the window is full."""
        oldest = self._next - self._window
        for tree in self._trees:
            if oldest >= 0 and oldest in tree.leaves:
                tree.forget_point(oldest)
            tree.insert_point(point, index=self._next)
        self._next += 1

    def to_bytes(self) -> bytes:
        """Compressed JSON of every tree (rrcf's own dict form) plus the generator state."""
        name, keys, pos, has_gauss, cached = self._rng.get_state(legacy=True)
        doc = {
            "window": self._window,
            "next": self._next,
            "rng": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "trees": [t.to_dict() if t.leaves else None for t in self._trees],
        }
        return zlib.compress(json.dumps(doc).encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> RrcfForest:
        """Restore a snapshot made by :meth:`to_bytes`."""
        import rrcf

        doc = json.loads(zlib.decompress(data))
        name, keys, pos, has_gauss, cached = doc["rng"]
        rng = np.random.RandomState()
        rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        trees = []
        for obj in doc["trees"]:
            tree = rrcf.RCTree(random_state=rng)
            if obj is not None:
                tree.load_dict(obj)
            trees.append(tree)
        return cls(trees, rng, int(doc["window"]), int(doc["next"]))


def make_forest(settings: ForestSettings, dims: int) -> Forest:
    """A new empty forest of the configured backend."""
    if settings.backend == "krcf":
        return KrcfForest.create(settings, dims)
    return RrcfForest.create(settings, dims)


def load_forest(backend: str, data: bytes) -> Forest:
    """Restore a forest saved by ``to_bytes`` of the named backend."""
    if backend == "krcf":
        return KrcfForest.from_bytes(data)
    if backend == "rrcf":
        return RrcfForest.from_bytes(data)
    raise ConfigError(f"unknown forest backend {backend!r} in model file", fix="use krcf or rrcf and re-fit")
