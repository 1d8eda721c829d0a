"""The detection evaluation's bookkeeping (bench/anomaly_eval.py) and its PCA baseline (bench/anomaly_baselines.py).

No simulation here: the protocol's arithmetic on hand-made alarm series, the seed splits, and the PCA monitor on
synthetic correlated data.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import anomaly_baselines as pca
from bench import anomaly_eval as ev
from gateway.anomaly.model import AlarmState
from simulator.plant import IdvEvent, XmvHoldEvent


def test_tuning_and_test_runs_share_no_seed() -> None:
    tuning, test = ev.SPLITS["tuning"], ev.SPLITS["test"]
    scored = {s: {*sp.normal_seeds, *(sp.idv_seed(i) for i in ev.IDVS)} for s, sp in (("tu", tuning), ("te", test))}
    assert not scored["tu"] & scored["te"]
    assert not scored["te"] & set(ev.FIT_SEEDS)  # test runs never fit either
    assert 21 in ev.IDVS and len([i for i in ev.IDVS if i not in ev.INVISIBLE]) == 18
    assert ev.REVISED21 in ev.scored_keys(tuning) and len(ev.scored_keys(test)) == 21 + 1 + 6


def test_idv21_is_the_benchmark_sets_stuck_stream_4_valve_and_the_revised_one_runs_apart() -> None:
    assert ev._fault(21, False, 100.0) == [XmvHoldEvent(100.0, 4)]
    assert ev._fault(21, True, 100.0) == [IdvEvent(100.0, 21)]  # tep-studio's A feed temperature variation
    assert ev._fault(7, False, 100.0) == [IdvEvent(100.0, 7)] and ev._fault(0, False, 100.0) == []


def _series(onset_alarm: float, before_alarm: int = 0, warmup: int = 0) -> ev.Series:
    """A 48 h run at 3 minutes: ``before_alarm`` alarmed samples before onset, ``onset_alarm`` share after."""
    ts = [k * ev.SAMPLE_S for k in range(960)]
    onset = int(ev.ONSET_H * 3600 / ev.SAMPLE_S)
    after = 960 - onset
    al = [1 if onset - before_alarm <= k < onset else 0 for k in range(onset)]
    al += [1 if k < round(onset_alarm * after) else 0 for k in range(after)]
    return ts, al, [k >= warmup for k in range(960)]


def test_metrics_follow_the_protocol() -> None:
    split = ev.SPLITS["tuning"]
    series = {f"idv{i}": _series(0.5 if i in ev.INVISIBLE else 1.0) for i in ev.IDVS}
    series["idv21"] = _series(0.1, before_alarm=10, warmup=5)
    series[ev.REVISED21] = _series(0.0, before_alarm=3)
    series |= {f"normal{s}": _series(0.0, warmup=100) for s in split.normal_seeds}
    series["normal11"][1][500:506] = [1] * 6
    m = ev.metrics(split, series)
    assert m["avg_detection_rate"] == pytest.approx((17 + 0.1) / 18)  # 3, 9, 15 left out, IDV 21 counted
    assert m["per_idv"][21]["delay_min"] == 0
    assert m[ev.REVISED21]["detection_rate"] == 0  # reported apart, not averaged (the 0 would pull the mean down)
    before = 22 * 160 - 5  # IDV 21's warm-up samples are not counted; the revised IDV 21's pre-onset samples are
    unseen = len(split.normal_seeds) * (960 - 100)
    assert m["normal_samples"] == before + unseen
    assert m["false_alarm_rate"] == pytest.approx((16 + 3) / (before + unseen))
    assert m["unseen_normal_far"] == pytest.approx(6 / unseen)


def test_tuning_split_has_as_many_unseen_normal_runs_as_test() -> None:
    # two runs (1,922 samples) expect one or two alarms at the budget: no rate can be tuned on that
    assert len(ev.SPLITS["tuning"].normal_seeds) == len(ev.SPLITS["test"].normal_seeds) == 6


def test_point_ratio_is_each_groups_share_over_its_threshold_over_its_rate() -> None:
    config = ev.groups_config()  # plant 0.003, condenser 0.001, variability 0.001
    row = {"score_plant": "", "score_condenser": "", "score_variability": ""}
    rows = [dict(row)] + [
        {"score_plant": 1.5 if k < 3 else 0.5, "score_condenser": 1.0 if k < 5 else 0.2, "score_variability": 0.1}
        for k in range(1000)
    ]
    run = ev.points_over(rows, ["plant", "condenser", "variability"])
    assert run == {"plant": (3, 1000), "condenser": (0, 1000), "variability": (0, 1000)}  # 1.0 is not over
    other = {"plant": (6, 1000), "condenser": (1, 500), "variability": (0, 500)}
    ratios = ev.point_ratios([run, other], config)
    assert ratios["plant"] == pytest.approx(9 / 2000 / 0.003)
    assert ratios["condenser"] == pytest.approx(1 / 1500 / 0.001)
    assert ratios["variability"] == 0
    # far_ratio pools the groups: all points over thresholds / all the points the groups' rates expect
    assert ev.pooled_ratio([run, other], config) == pytest.approx(10 / (2000 * 0.003 + 1500 * 0.001 + 1500 * 0.001))


def test_budget_is_the_sum_of_the_groups_rates() -> None:
    assert ev.budget(ev.groups_config()) == pytest.approx(0.005)
    assert {g["forest"]["seed"] for g in ev.with_seed(ev.groups_config(), 7)["groups"]} == {7}


def test_pca_hysteresis_is_the_forest_groups_rule() -> None:
    rng = np.random.default_rng(3)
    flags = rng.random(2000) < 0.4
    state, expected = AlarmState(), []
    for f in flags:
        state.feed(bool(f), 2, 3)
        expected.append(int(state.active))
    assert pca.hysteresis(flags, 2, 3) == expected


def _correlated(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(3, 10))
    return rng.normal(size=(n, 3)) @ mix + 0.1 * rng.normal(size=(n, 10)) + 5.0


def test_pca_thresholds_hold_on_new_normal_data_and_see_both_kinds_of_fault() -> None:
    monitor = pca.PcaMonitor.fit(_correlated(20000, 1), rate=0.01)
    assert monitor.components == 3
    t2, spe = monitor.statistics(_correlated(20000, 2))
    assert 0.005 < np.mean(t2 > monitor.t2_limit) < 0.02
    assert 0.005 < np.mean(spe > monitor.spe_limit) < 0.02
    broken = _correlated(500, 3)
    broken[:, 0] += 1.0  # one sensor off the correlation structure: SPE's job
    assert np.mean(monitor.statistics(broken)[1] > monitor.spe_limit) > 0.9
    shift = 8 * np.sqrt(monitor.eigenvalues[-1]) * monitor.loadings[:, -1]  # inside the model plane: T²'s job
    along = _correlated(500, 4) + monitor.scale * shift
    t2_along, _ = monitor.statistics(along)
    assert np.mean(t2_along > monitor.t2_limit) > 0.9
