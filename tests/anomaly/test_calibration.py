"""Thresholds (issue 17 item 2): the peaks-over-threshold tail, cross-fitted calibration of a group, its record in
the model file, and what a window too short for it gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gateway.anomaly.model as model_module
from gateway.anomaly import GroupModel, Vector, persist
from gateway.anomaly.calibration import Calibration, calibrate, fit_gpd, fit_tail
from gateway.errors import ConfigError
from tests.support.anomaly import NS, T0, group, synthetic


def test_gpd_fit_recovers_the_shape_and_scale_of_pareto_samples() -> None:
    rng = np.random.default_rng(1)
    for shape, scale in ((0.3, 1.0), (-0.2, 2.0), (0.0, 0.5)):
        u = 1.0 - rng.random(2000)
        excess = scale * (-np.log(u) if shape == 0 else (u**-shape - 1.0) / shape)
        got_shape, got_scale = fit_gpd(excess)
        assert abs(got_shape - shape) < 0.1, (shape, got_shape)
        assert abs(got_scale / scale - 1.0) < 0.15, (scale, got_scale)


def test_pot_recovers_a_far_quantile_from_300_points() -> None:
    """The 0.3 % quantile of a unit exponential is ln(1/0.003) = 5.81; 300 points hold about one point above it."""
    truth = np.log(1 / 0.003)
    errors = []
    for seed in range(40):
        tail = fit_tail(np.random.default_rng(seed).exponential(1.0, 300))
        assert tail is not None
        errors.append(tail.quantile(0.003) / truth - 1.0)
    # the estimator's own spread on 300 points is ~17 % (measured over 300 samples): unbiased within a few %,
    # every sample within 45 %
    assert abs(np.median(errors)) < 0.08
    assert max(abs(e) for e in errors) < 0.45


def test_calibration_reports_an_interval_that_holds_the_true_rate_and_falls_back_when_the_tail_is_thin() -> None:
    rng = np.random.default_rng(3)
    cal = calibrate([rng.exponential(1.0, 400) for _ in range(5)], 0.003)
    true_rate = float(np.exp(-cal.threshold))
    assert cal.method == "pot" and cal.points == 2000 and cal.folds == 5 and cal.note == ""
    assert cal.rate_low < true_rate < cal.rate_high
    assert cal.rate_low < cal.expected_rate < cal.rate_high
    thin = calibrate([rng.exponential(1.0, 50) for _ in range(4)], 0.003)
    assert thin.method == "empirical" and "too few" in thin.note and thin.shape is None


def _fit(seed: int, data: np.ndarray) -> GroupModel:
    model = GroupModel(group(shingle=1, false_alarm_rate=0.003,
                             forest={"trees": 30, "samples_per_tree": 64, "seed": seed}))
    model.fit([data])
    return model


def test_thresholds_are_stable_across_forest_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same normal data, six forest seeds: the POT thresholds spread far less than the empirical 0.3 % quantile of
    the same out-of-sample scores (measured: range 2.7 % against 6.3 % of the mean)."""
    captured: list[np.ndarray] = []

    def spy(blocks: list[np.ndarray], rate: float, **kw: Any) -> Calibration:
        captured.append(np.concatenate(blocks))
        return calibrate(blocks, rate, **kw)

    monkeypatch.setattr(model_module, "calibrate", spy)
    data = synthetic(1500, seed=21)
    pot, empirical = [], []
    for seed in range(1, 7):
        model = _fit(seed, data)
        assert model.calibration is not None and model.calibration.method == "pot"
        assert model.calibration.points == len(captured[-1]) == 1500  # every vector scored out of sample
        pot.append(model.threshold)
        empirical.append(float(np.quantile(captured[-1], 1 - 0.003)))
    spread = {"pot": np.ptp(pot) / np.mean(pot), "empirical": np.ptp(empirical) / np.mean(empirical)}
    assert spread["pot"] < 0.6 * spread["empirical"], spread


def test_the_threshold_holds_its_rate_on_new_normal_data() -> None:
    model = GroupModel(group(shingle=1, false_alarm_rate=0.01))
    model.fit([synthetic(2000, seed=30)])
    cal = model.calibration
    assert cal is not None and cal.target_rate == 0.01
    scores = []
    for k, row in enumerate(synthetic(6000, seed=31)):
        r = model.step(Vector(T0 + k * NS, row), "frozen")
        if r is not None:
            scores.append(r.score)
    rate = float(np.mean(np.array(scores) > 1.0))
    assert 0.5 < rate / 0.01 < 2.0, (rate, cal)


def test_calibration_is_saved_and_a_model_saved_before_it_loads_without_one(tmp_path: Path) -> None:
    g = group()
    model = GroupModel(g)
    model.fit([synthetic(400, seed=40)])
    state, forest = model.to_state(), model.forest_bytes()
    assert forest is not None
    persist.save(tmp_path / "new", {"unit": state}, {"unit": forest})
    manifest, forests = persist.load(tmp_path / "new")
    again = GroupModel.from_state(g, manifest["groups"]["unit"], forests["unit"])
    assert again.calibration == model.calibration and again.calibration is not None

    old = {k: v for k, v in state.items() if k != "calibration"}  # what the previous version wrote
    persist.save(tmp_path / "old", {"unit": old}, {"unit": forest})
    manifest, forests = persist.load(tmp_path / "old")
    restored = GroupModel.from_state(g, manifest["groups"]["unit"], forests["unit"])
    assert restored.calibration is None and restored.threshold == model.threshold
    row = synthetic(3, seed=41)
    results = [restored.step(Vector(T0 + k * NS, r)) for k, r in enumerate(row)]
    assert results[-1] is not None  # it scores


def test_a_window_too_short_for_two_calibration_blocks_names_the_fix() -> None:
    model = GroupModel(group())
    with pytest.raises(ConfigError, match=r"training window too short for group 'unit': 63 vectors, need at least 64"
                       ) as exc:
        model.fit([synthetic(63, seed=50)])
    assert "two calibration blocks" in str(exc.value) and "supply more normal data" in exc.value.fix
    model.fit([synthetic(64, seed=50)])  # the minimum the message names is enough
    assert model.calibration is not None and model.calibration.folds == 2
    assert model.calibration.method == "empirical" and model.calibration.note
