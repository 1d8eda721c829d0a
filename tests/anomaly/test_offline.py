"""Offline replay and the gatewayctl commands, on synthetic CSV history."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.anomaly import AnomalyConfig, offline
from gateway.anomaly.cli import register
from tests.support.anomaly import TAGS, synthetic

pytestmark = pytest.mark.usefixtures("small_probe")  # these fit rrcf models: its fit is mostly the probe (conftest)

GROUPS = {
    "groups": [
        {
            "name": "all",
            "tags": TAGS,
            "shingle": 2,
            "cadence_s": 60,
            "max_age_s": 150,
            "raise_after": 2,
            "clear_after": 3,
            "forest": {"trees": 30, "samples_per_tree": 64},
        },
        {
            "name": "pair",
            "tags": ["flow", "valve"],
            "cadence_s": 60,
            "max_age_s": 150,
            "forest": {"backend": "rrcf", "trees": 10, "samples_per_tree": 32},
        },
    ]
}


def _csv(path: Path, data: np.ndarray, timestamps: bool = True) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow((["timestamp"] if timestamps else []) + TAGS)
        for k, row in enumerate(data):
            cells = [f"{v:.6f}" if np.isfinite(v) else "" for v in row]
            w.writerow(([str(60 * k)] if timestamps else []) + cells)
    return path


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gatewayctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_fit_score_status_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump(GROUPS))
    normal = _csv(tmp_path / "normal.csv", synthetic(500, seed=1))
    history = synthetic(120, seed=2, shift={"valve": 4.0}, start=60)
    history[10, 0] = np.nan
    hist = _csv(tmp_path / "history.csv", history)
    model = tmp_path / "model"
    assert (
        _cli(
            ["anomaly", "fit", "--config", str(tmp_path / "groups.yaml"), "--data", str(normal), "--model", str(model)]
        )
        == 0
    )
    out = tmp_path / "scores.csv"
    assert _cli(["anomaly", "score", "--model", str(model), "--data", str(hist), "--out", str(out), "--progress"]) == 0
    assert "120/120 rows" in capsys.readouterr().err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 120
    assert {"score_all", "alarm_all", "score_pair", "alarm_pair", "score", "alarm", "top_tags"} <= set(rows[0])
    assert rows[10]["score_all"] == ""  # the NaN row is invalid: not scored
    assert np.mean([int(r["alarm"]) for r in rows[:60]]) < 0.1
    assert np.mean([int(r["alarm"]) for r in rows[65:]]) > 0.9
    assert rows[-1]["top_tags"].split(";")[0].startswith("valve:")
    assert _cli(["anomaly", "status", "--model", str(model)]) == 0
    status = capsys.readouterr().out
    assert '"state": "scoring"' in status and '"backend": "rrcf"' in status
    assert '"calibration": {' in status and '"expected_rate":' in status


def test_scoring_does_not_modify_the_model(tmp_path: Path) -> None:
    cfg = AnomalyConfig.model_validate(GROUPS)
    offline.fit(cfg, [_csv(tmp_path / "n.csv", synthetic(500, seed=3))], tmp_path / "m")
    before = (tmp_path / "m" / "model.zip").read_bytes()
    offline.score(tmp_path / "m", _csv(tmp_path / "h.csv", synthetic(50, seed=4)), None, updates="gated")
    assert (tmp_path / "m" / "model.zip").read_bytes() == before


def test_rows_without_timestamps_use_the_interval(tmp_path: Path) -> None:
    cfg = AnomalyConfig.model_validate(GROUPS)
    offline.fit(
        cfg, [_csv(tmp_path / "n.csv", synthetic(500, seed=5), timestamps=False)], tmp_path / "m", interval_s=60
    )
    rows = offline.score(
        tmp_path / "m", _csv(tmp_path / "h.csv", synthetic(5, seed=6), timestamps=False), None, interval_s=60
    )
    assert [r["timestamp"] for r in rows] == [0.0, 60.0, 120.0, 180.0, 240.0]


def test_a_group_naming_a_missing_column_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"groups": [{"name": "x", "tags": ["flow", "nope"], "cadence_s": 60}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    data = _csv(tmp_path / "n.csv", synthetic(100, seed=7))
    code = _cli(
        ["anomaly", "fit", "--config", str(tmp_path / "g.yaml"), "--data", str(data), "--model", str(tmp_path / "m")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no column for 1 tag(s) the groups name (x 1 of 2): nope;" in err and "Fix:" in err


def test_too_little_normal_history_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GROUPS))
    data = _csv(tmp_path / "n.csv", synthetic(40, seed=8))
    assert (
        _cli(
            [
                "anomaly",
                "fit",
                "--config",
                str(tmp_path / "g.yaml"),
                "--data",
                str(data),
                "--model",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "training window too short" in capsys.readouterr().err


def test_status_of_an_empty_directory_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["anomaly", "status", "--model", str(tmp_path)]) == 2
    assert "gatewayctl anomaly fit" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gateway.anomaly.cli import plot

    cfg = AnomalyConfig.model_validate(GROUPS)
    offline.fit(cfg, [_csv(tmp_path / "n.csv", synthetic(500, seed=9))], tmp_path / "m")
    rows = offline.score(tmp_path / "m", _csv(tmp_path / "h.csv", synthetic(80, seed=10, shift={"temp": 3})), None)
    plot(rows, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
