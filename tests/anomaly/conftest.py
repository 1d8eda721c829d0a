"""Shared helpers: a small correlated synthetic process, so tests need no simulator and run in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gateway.anomaly import AnomalyConfig, TagGroup
from gateway.record import Quality, Record, make_record

TAGS = ["flow", "pressure", "temp", "level", "valve", "power"]
NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def synthetic(n: int, seed: int, shift: dict[str, float] | None = None, start: int = 0) -> np.ndarray:
    """``n`` rows of 6 tags from 2 latent factors plus noise; ``shift`` steps named tags from row ``start``."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.2], [0.8, -0.5], [0.1, 1.0], [0.5, 0.5], [-0.7, 0.3], [0.3, -0.9]])
    data = latent @ mix.T + 0.1 * rng.normal(size=(n, len(TAGS)))
    data = data * np.array([10, 2, 1, 5, 3, 50]) + np.array([100, 20, 80, 50, 40, 1000])
    for tag, size in (shift or {}).items():
        data[start:, TAGS.index(tag)] += size
    return np.asarray(data, dtype=np.float64)


def group(**overrides: Any) -> TagGroup:
    """A fast group over the synthetic tags (few small trees), one vector a second."""
    spec: dict[str, Any] = {
        "name": "unit",
        "tags": TAGS,
        "shingle": 2,
        "forest": {"backend": "krcf", "trees": 30, "samples_per_tree": 64, "seed": 3},
        "cadence_s": 1.0,
        "max_age_s": 2.5,
        "false_alarm_rate": 0.01,
        "raise_after": 3,
        "clear_after": 4,
        "training_points": 400,
    }
    spec.update(overrides)
    return TagGroup.model_validate(spec)


def config(**overrides: Any) -> AnomalyConfig:
    """One-group detector config."""
    return AnomalyConfig(groups=[group(**overrides)])


def records(row: np.ndarray, ts_ns: int, tags: list[str] = TAGS) -> Iterator[Record]:
    """One record per tag of a row, as a collector would deliver them."""
    for i, (tag, value) in enumerate(zip(tags, row, strict=True)):
        yield make_record("plc", tag, float(value), seq=i, source_ts_ns=ts_ns, gateway_ts_ns=ts_ns)


def bad(tag: str, ts_ns: int) -> Record:
    """A BAD-quality record with no value."""
    return Record("plc", tag, None, Quality.BAD, ts_ns, ts_ns, 99)


@pytest.fixture(params=["krcf", "rrcf"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test over both forest backends."""
    return str(request.param)
