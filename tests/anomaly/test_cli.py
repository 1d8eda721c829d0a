"""``gatewayctl anomaly``, as a user reads it: no silent failure, one-line errors, help, --json, one name per mode.

Runs through gatewayctl's own entry (:func:`gateway.cli.main.main`), so that the options every command gets and the
exit codes are the ones a user sees.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from gateway.anomaly import offline
from gateway.anomaly.calibration import Calibration
from gateway.anomaly.cli import _fit_lines, _pct
from gateway.anomaly.config import TagGroup
from gateway.anomaly.livestatus import live_status
from gateway.cli.main import build_parser
from gateway.cli.main import main as gatewayctl
from tests.support.anomaly import TAGS, synthetic

ROOT = Path(__file__).resolve().parents[2]
FAST = {"trees": 20, "samples_per_tree": 64}


def _groups(path: Path, **over: Any) -> Path:
    """A groups file with one averaged, shingled group over the synthetic tags and ``cadence_s`` not set."""
    group: dict[str, Any] = {"name": "unit", "tags": TAGS, "shingle": 2, "smoothing": 3, "forest": FAST,
                             "false_alarm_rate": 0.01, "raise_after": 2, "clear_after": 3}
    group.update(over)
    path.write_text(yaml.safe_dump({"groups": [group]}))
    return path


def _csv(path: Path, data: np.ndarray, period_s: float = 180.0, header: list[str] | None = None) -> Path:
    """Rows ``period_s`` apart (a historian export at the TEP's 3 minutes by default); NaN cells are empty."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *(header or TAGS)])
        for k, row in enumerate(data):
            w.writerow([f"{period_s * k:g}", *(f"{v:.6f}" if np.isfinite(v) else "" for v in row)])
    return path


def _fit(tmp_path: Path, groups: Path, data: Path, *extra: str) -> int:
    return gatewayctl(["anomaly", "fit", "--config", str(groups), "--data", str(data), "--model",
                       str(tmp_path / "model"), *extra])


def _score(tmp_path: Path, data: Path, *extra: str) -> int:
    return gatewayctl(["anomaly", "score", "--model", str(tmp_path / "model"), "--data", str(data), "--out",
                       str(tmp_path / "scores.csv"), *extra])


def _scores(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# -- item 5: no silent failure ---------------------------------------------------------------------------------------


def test_three_minute_rows_score_when_cadence_is_not_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: 3-minute rows, cadence_s at its 1 s default, smoothing and shingle > 1."""
    groups = _groups(tmp_path / "g.yaml")
    assert _fit(tmp_path, groups, _csv(tmp_path / "normal.csv", synthetic(500, seed=1))) == 0
    history = _csv(tmp_path / "h.csv", synthetic(120, seed=2, shift={"valve": 4.0}, start=60))
    assert _score(tmp_path, history) == 0
    rows = _scores(tmp_path)
    scored = [r for r in rows if r["score_unit"] != ""]
    assert len(scored) == 120 - 3  # the moving average of 3 and the shingle of 2 fill on the first 4 rows
    assert np.mean([int(r["alarm"]) for r in rows[70:]]) > 0.9
    assert np.mean([int(r["alarm"]) for r in rows[:60]]) < 0.1
    # the model records the cadence it was fitted for, so that the component assembles the same vectors
    saved = json.loads((tmp_path / "model" / offline.CONFIG_FILE).read_text())
    assert saved["groups"][0]["cadence_s"] == 180.0


def test_fit_says_which_cadence_it_took_from_the_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), _csv(tmp_path / "n.csv", synthetic(500, seed=1))) == 0
    out = capsys.readouterr().out
    assert "cadence_s not set" in out and "180 s" in out and "cadence_s: 180" in out


def test_an_explicit_cadence_that_contradicts_the_csv_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = _groups(tmp_path / "g.yaml", cadence_s=1)
    assert _fit(tmp_path, groups, _csv(tmp_path / "n.csv", synthetic(500, seed=1))) == 2
    err = capsys.readouterr().err
    assert "'unit'" in err and "cadence_s 1 s" in err and "180 s apart" in err and "Fix:" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()


def test_score_refuses_a_csv_whose_rows_are_further_apart_than_the_model_s_cadence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), _csv(tmp_path / "n.csv", synthetic(500, seed=1), 60)) == 0
    capsys.readouterr()
    assert _score(tmp_path, _csv(tmp_path / "h.csv", synthetic(50, seed=2), 180)) == 2
    err = capsys.readouterr().err
    assert "'unit'" in err and "60 s" in err and "180 s" in err and "Fix:" in err


def test_score_exits_non_zero_when_a_group_never_produced_a_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), _csv(tmp_path / "n.csv", synthetic(500, seed=1))) == 0
    capsys.readouterr()
    history = synthetic(60, seed=2)
    history[:, TAGS.index("valve")] = np.nan  # the valve's transmitter is BAD all along
    assert _score(tmp_path, _csv(tmp_path / "h.csv", history)) == 1
    captured = capsys.readouterr()
    assert "group 'unit' produced no score" in captured.err and "bad:valve" in captured.err
    assert len(_scores(tmp_path)) == 60  # the rows are still written, for a look at them


# -- item 5: fit says what it did ------------------------------------------------------------------------------------


def test_fit_reports_vectors_calibration_rate_and_dropped_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = synthetic(500, seed=1)
    data[[10, 11, 12], TAGS.index("flow")] = np.nan
    normal = _csv(tmp_path / "n.csv", data)
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), normal, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    unit = summary["groups"]["unit"]
    assert unit["rows"] == 500 and unit["vectors"] == 497
    assert unit["dropped"] == {"bad:flow": 3, "moving average of 3": 4}  # two pieces, 2 rows each
    assert unit["fitted_vectors"] == 493
    cal = unit["calibration"]
    model = offline.load_detector(tmp_path / "model").models["unit"]
    assert model.calibration is not None
    assert cal["points"] == model.calibration.points and cal["threshold"] == pytest.approx(model.threshold)
    assert cal["rate_low"] <= cal["expected_rate"] <= cal["rate_high"]
    assert summary["model"] == str(tmp_path / "model")

    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), normal) == 0
    text = capsys.readouterr().out
    assert "493 vectors" in text and f"{cal['points']} out-of-sample scores" in text
    assert "3 bad:flow" in text and "4 filling the moving average of 3" in text
    assert re.search(r"expected false-alarm rate [\d.]+ % \(90 % interval [\d.]+ to [\d.]+ %\)", text), text
    assert "configured 1.00 %" in text


def test_fit_prints_small_rates_with_two_significant_digits() -> None:
    cal = Calibration("pot", 900, 1.7, 0.001, 0.001, 0.000042, 0.0013, folds=5)
    fit = offline.GroupFit(TagGroup(name="unit", tags=TAGS), rows=900, vectors=900, fitted_vectors=900,
                           threshold=1.7, calibration=cal)
    line = _fit_lines("unit", fit)[-1]
    assert "expected false-alarm rate 0.10 % (90 % interval 0.0042 to 0.13 %)" in line, line
    assert "configured 0.10 %" in line
    rates = (0.0, 0.003, 0.00013, 0.0005, 0.0123, 9.5e-07)
    assert [_pct(r) for r in rates] == ["0", "0.30", "0.013", "0.050", "1.23", "0.000095"]


# -- item 6: a CLI a user can read -----------------------------------------------------------------------------------


def test_a_header_that_does_not_match_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = [f"plant.{t}" for t in TAGS]  # a historian export that prefixes every tag
    data = _csv(tmp_path / "n.csv", synthetic(100, seed=1), header=wrong)
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), data) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "flow" in err and "plant.flow" in err and "Fix:" in err


def test_a_long_header_is_abridged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wide = [f"T{i}" for i in range(200)]
    data = np.random.default_rng(0).normal(size=(60, 200))
    assert _fit(tmp_path, _groups(tmp_path / "g.yaml"), _csv(tmp_path / "n.csv", data, header=wide)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 600, err
    assert "T0" in err and "T199" in err and "201 columns" in err


def test_anomaly_help_is_usage_not_a_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gatewayctl(["anomaly", "--help"])
    text = capsys.readouterr().out
    for command in ("fit", "score", "status"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), text
    assert "register" not in text and "``" not in text and ":func:" not in text


def _options(*command: str) -> set[str]:
    """The options gatewayctl's own parser offers after ``anomaly <command>``."""
    sub: argparse.ArgumentParser = build_parser(["anomaly", *command])
    for word in ("anomaly", *command):
        action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = action.choices[word]
    return {o for a in sub._actions for o in a.option_strings}


def test_each_subcommand_offers_only_options_that_act() -> None:
    unused = {"--config-dir", "--deployed", "--stream-manager"}
    assert not _options("fit") & (unused | {"--store", "--greengrass-root", "--plot", "--updates"})
    assert not _options("score") & (unused | {"--store", "--greengrass-root", "--config"})
    assert not _options("status") & (unused | {"--data", "--interval-s", "--updates"})
    assert {"--json", "--data", "--model", "--config"} <= _options("fit")
    assert {"--store", "--json", "--model", "--greengrass-root"} <= _options("status")


def _documented_updates() -> set[str]:
    text = (ROOT / "docs" / "anomaly.md").read_text()
    found = re.findall(r"--updates ([a-z|]+)", text.split("## Command line", 1)[1].split("\n## ", 1)[0])
    return {v for spelling in found for v in spelling.split("|")}


def test_one_name_per_mode_in_the_help_and_the_docs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gatewayctl(["anomaly", "score", "--help"])
    help_text = capsys.readouterr().out
    assert "{streaming,frozen}" in help_text and "gated" not in help_text
    assert _documented_updates() == {"streaming", "frozen"}

    assert _fit(tmp_path, _groups(tmp_path / "g.yaml", smoothing=1), _csv(tmp_path / "n.csv", synthetic(500, 1))) == 0
    history = _csv(tmp_path / "h.csv", synthetic(80, seed=2, shift={"valve": 4.0}, start=20))
    capsys.readouterr()
    assert _score(tmp_path, history, "--updates", "streaming") == 0
    streaming = _scores(tmp_path)
    assert _score(tmp_path, history, "--updates", "gated") == 0  # documented before: still accepted
    assert "deprecated" in capsys.readouterr().err
    assert _scores(tmp_path) == streaming
    assert _score(tmp_path, history, "--updates", "frozen") == 0
    assert _scores(tmp_path) != streaming


def test_status_shows_score_and_threshold_in_one_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    status = {"updated_ns": time.time_ns(), "pid": 1, "groups": {
        "reactor": {"state": "scoring", "score": 0.64, "threshold": 7.93, "alarm": False, "missing_tags": [],
                    "invalid": {}, "last_scored_ns": time.time_ns()}}}
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "factoryedge.AnomalyDetector.json").write_text(json.dumps(status))
    parser = build_parser(["anomaly", "status"])
    assert live_status(parser.parse_args(["anomaly", "status", "--store", str(tmp_path)])) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "GROUP" in line)
    row = next(line for line in table.splitlines() if "reactor" in line)
    columns = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]  # 2 spaces between columns
    ends = [start for _name, start in columns[1:]] + [len(row)]
    cells = {name: row[start:end].strip() for (name, start), end in zip(columns, ends, strict=True)}
    # score relative to the threshold, and the threshold in that unit: the alarm line 1.00
    assert cells["SCORE"] == "0.64" and cells["THRESHOLD"] == "1.00"
    assert cells["RAW"] == "5.08 of 7.93"  # the forest score and threshold themselves, both in forest-score units

    gatewayctl(["status", "--store", str(tmp_path)])  # the pipeline screen: the same two units, never mixed
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("reactor"))
    assert line.split()[2] == "0.64" and "5.08 of 7.93" in line
