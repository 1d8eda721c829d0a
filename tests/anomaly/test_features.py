"""Features over time (level, std, delta): batch and streaming agree, variance faults show, windows reset on a gap,
a saved model restores and scores the same, attribution names tags, bad settings are refused with the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.anomaly import GroupModel, Vector, persist
from gateway.anomaly.config import load_config, min_training_vectors
from gateway.anomaly.features import FeatureWindow, batch
from gateway.anomaly.model import StepResult
from gateway.errors import ConfigError
from tests.support.anomaly import NS, T0, TAGS, group, synthetic

FEATURES = ["level", "std", "delta"]


def _steps(model: GroupModel, data: np.ndarray, first: int = 0, updates: str = "gated") -> list[StepResult | None]:
    return [model.step(Vector(T0 + (first + k) * NS, row), updates) for k, row in enumerate(data)]  # type: ignore[arg-type]


def _noise(n: int, seed: int, scale: float = 1.0, start: int = 0) -> np.ndarray:
    """Three independent noisy tags around fixed levels; tag 0's noise is ``scale`` times larger from ``start``."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, 3))
    data[start:, 0] *= scale
    return np.asarray(data + np.array([50.0, 20.0, 7.0]), dtype=np.float64)


def test_streaming_features_equal_the_batch_rows_of_the_same_segment() -> None:
    data = synthetic(120, seed=1)
    window = FeatureWindow(FEATURES, 7)
    streamed = [r for r in (window.push(row) for row in data) if r is not None]
    rows = batch(data, FEATURES, 7)
    assert rows.shape == (120 - 6, 3 * len(TAGS))
    np.testing.assert_allclose(np.array(streamed), rows, rtol=0, atol=1e-12)
    # feature-major columns: level, then std, then delta of every tag
    np.testing.assert_allclose(rows[0, : len(TAGS)], data[6])
    np.testing.assert_allclose(rows[0, len(TAGS) : 2 * len(TAGS)], data[:7].std(axis=0))
    np.testing.assert_allclose(rows[0, 2 * len(TAGS) :], data[6] - data[0])


def test_levels_only_passes_vectors_through_and_keeps_the_old_fingerprint() -> None:
    row = synthetic(1, seed=2)[0]
    assert FeatureWindow(["level"], 10).push(row) is row
    assert batch(synthetic(5, seed=2), ["level"], 10).shape == (5, len(TAGS))
    plain, featured = group(), group(features=FEATURES, feature_window=8)
    assert "features" not in plain.fingerprint()  # models saved before features existed still match
    assert featured.fingerprint()["features"] == FEATURES
    assert featured.fingerprint()["feature_window"] == 8
    # the transform has 3 columns a tag to fit, and the window eats feature_window - 1 vectors
    assert min_training_vectors(featured) > min_training_vectors(plain)
    longer = group(features=FEATURES, feature_window=20)
    assert min_training_vectors(longer) - min_training_vectors(featured) == 20 - 8


def test_the_model_scores_streamed_vectors_as_the_fit_computes_them() -> None:
    g = group(features=FEATURES, feature_window=5, smoothing=3, shingle=2)
    model = GroupModel(g)
    model.fit([synthetic(600, seed=3)])
    assert model.whitener is not None and model.forest is not None
    data = synthetic(80, seed=4)
    streamed = [r.score for r in _steps(model, data, updates="frozen") if r is not None]
    # the batch path of fit(): moving average, feature rows, whitening, shingle
    c = np.cumsum(np.vstack([np.zeros((1, len(TAGS))), data]), axis=0)
    smoothed = (c[3:] - c[:-3]) / 3
    points = model.whitener.apply(batch(smoothed, FEATURES, 5))
    shingles = [np.concatenate(points[i - 1 : i + 1]) for i in range(1, len(points))]
    expected = [model.forest.score(p) / model.threshold for p in shingles]
    assert len(streamed) == 80 - 2 - 4 - 1
    np.testing.assert_allclose(streamed, expected, rtol=1e-9)


def test_a_variance_change_invisible_to_levels_is_caught_by_the_std_feature() -> None:
    share = {}
    for name, extra in (("levels", {}), ("features", {"features": FEATURES, "feature_window": 10})):
        model = GroupModel(group(tags=["a", "b", "c"], shingle=1, false_alarm_rate=0.01, **extra))
        model.fit([_noise(1500, seed=5)])
        normal = [r for r in _steps(model, _noise(400, seed=6)) if r is not None]
        fault = [r for r in _steps(model, _noise(400, seed=7, scale=3.0), first=1000) if r is not None]
        share[name] = (np.mean([r.alarm for r in normal]), np.mean([r.alarm for r in fault[10:]]))
    # same mean, 3x the standard deviation: a level is mostly inside the normal band, the window's spread is not
    assert share["features"][1] > 0.9, share
    assert share["levels"][1] < 0.4, share
    assert share["features"][0] < 0.05, share


def test_a_gap_empties_the_feature_window_so_no_window_spans_it() -> None:
    g = group(features=FEATURES, feature_window=6, shingle=1)
    model = GroupModel(g)
    model.fit([synthetic(600, seed=8)])
    before = _steps(model, synthetic(20, seed=9))
    assert [r is None for r in before[:6]] == [True] * 5 + [False]  # the window fills first
    after = _steps(model, synthetic(20, seed=10), first=100)  # 80 s later at a 1 s cadence: a gap
    assert [r is None for r in after[:6]] == [True] * 5 + [False], "scored across the gap"
    assert len(model.features.state()) == 6


def test_a_saved_model_restores_and_scores_exactly_as_the_original(tmp_path: Path) -> None:
    g = group(features=FEATURES, feature_window=6, smoothing=2, shingle=2)
    model = GroupModel(g)
    model.fit([synthetic(600, seed=11)])
    data = synthetic(120, seed=12, shift={"valve": 3.0}, start=70)
    _steps(model, data[:40])  # mid-stream: the windows hold vectors that the restore must bring back
    assert len(model.features.state()) == 6
    forest = model.forest_bytes()
    assert forest is not None
    persist.save(tmp_path, {"unit": model.to_state()}, {"unit": forest})
    manifest, forests = persist.load(tmp_path)
    restored = GroupModel.from_state(g, manifest["groups"]["unit"], forests["unit"])
    rest = data[40:]
    original = [(r.score, r.alarm, r.top_tags) for r in _steps(model, rest, first=40) if r is not None]
    again = [(r.score, r.alarm, r.top_tags) for r in _steps(restored, rest, first=40) if r is not None]
    assert len(original) == len(rest)  # restored windows are full: no refill after the restore
    assert again == original


def test_a_saved_feature_window_of_the_wrong_width_is_refused_at_restore() -> None:
    g = group(features=FEATURES, feature_window=6)
    model = GroupModel(g)
    model.fit([synthetic(600, seed=13)])
    _steps(model, synthetic(3, seed=14))
    state = model.to_state()
    state["features"] = [row[:-1] for row in state["features"]]
    with pytest.raises(ValueError, match="features holds rows"):
        GroupModel.from_state(g, state, model.forest_bytes())


def test_attribution_sums_a_tags_features_and_names_the_tag() -> None:
    model = GroupModel(group(features=FEATURES, feature_window=8, shingle=1, top_tags=3))
    model.fit([synthetic(800, seed=15)])
    data = synthetic(200, seed=16)
    valve = TAGS.index("valve")
    data[100:, valve] += np.random.default_rng(17).normal(scale=4.0, size=100)  # valve noisy, same mean
    alarmed = [r for r in _steps(model, data) if r is not None and r.alarm]
    assert alarmed
    named = {t for r in alarmed for t, _ in r.top_tags}
    assert named <= set(TAGS)
    assert np.mean([r.top_tags[0][0] == "valve" for r in alarmed]) > 0.8
    assert all(0.0 <= s <= 1.0 for r in alarmed for _, s in r.top_tags)


@pytest.mark.parametrize(
    ("setting", "field", "fix"),
    [
        ({"feature_window": 1}, "feature_window", "use 2 or more"),
        ({"features": ["level", "stdev"]}, "features", "use level, std and/or delta"),
        ({"features": ["std", "std"]}, "features", "list each once"),
        ({"features": []}, "features", "at least 1"),
    ],
)
def test_a_bad_feature_setting_is_refused_naming_the_field_and_the_fix(
    tmp_path: Path, setting: dict[str, object], field: str, fix: str
) -> None:
    spec = {"name": "unit", "tags": TAGS, "features": FEATURES, **setting}
    path = tmp_path / "groups.yaml"
    path.write_text(yaml.safe_dump({"groups": [spec]}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"groups.0.{field}" in text and fix in text, text


def test_too_few_training_points_for_the_feature_columns_is_refused_with_the_minimum() -> None:
    with pytest.raises(ValueError, match=r"features \['level', 'std', 'delta'\] over 10 vectors: use at least"):
        group(features=FEATURES, feature_window=10, training_points=60)
