"""``gatewayctl anomaly suggest``: groups proposed from the correlation of normal history."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.anomaly import cli, offline
from gateway.anomaly.config import AnomalyConfig, TagGroup, load_config, min_training_vectors
from gateway.anomaly.suggest import cluster, render_yaml, suggest, suggest_config
from gateway.errors import ConfigError

BLOCK_A = ["A1", "A2", "A3", "A4"]
BLOCK_B = ["B1", "B2", "B3"]


def _write(path: Path, rows: int = 600, *, seed: int = 1, timestamps: bool = True, period: float = 10.0) -> Path:
    """Two independent blocks of correlated tags, a constant tag, a text tag and a lone noise tag."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    cols: dict[str, list[str]] = {}
    for t in BLOCK_A:
        cols[t] = [f"{v:.6g}" for v in 10 + a + 0.3 * rng.normal(size=rows)]
    for t in BLOCK_B:
        cols[t] = [f"{v:.6g}" for v in -5 + 2 * b + 0.5 * rng.normal(size=rows)]
    cols["NOISE"] = [f"{v:.6g}" for v in rng.normal(size=rows)]
    cols["CONST"] = ["7.5"] * rows
    cols["STATE"] = ["running"] * rows
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow((["timestamp"] if timestamps else []) + list(cols))
        for i in range(rows):
            w.writerow(([f"{i * period:g}"] if timestamps else []) + [c[i] for c in cols.values()])
    return path


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["anomaly", *argv])


def test_two_independent_blocks_are_found(tmp_path: Path) -> None:
    config = suggest_config([_write(tmp_path / "n.csv")])
    units = sorted(sorted(g["tags"]) for g in config["groups"] if g["name"] != "plant" and g.get("smoothing", 1) == 1)
    assert units == [BLOCK_A, BLOCK_B]
    plant = next(g for g in config["groups"] if g["name"] == "plant")
    assert sorted(plant["tags"]) == sorted([*BLOCK_A, *BLOCK_B, "NOISE"])  # the lone tag is scored there
    assert {g["cadence_s"] for g in config["groups"]} == {10.0}  # the period comes from the timestamps


def test_cluster_respects_cut_and_size_cap() -> None:
    corr = np.array([[1, 0.9, 0.8, 0.0], [0.9, 1, 0.85, 0.0], [0.8, 0.85, 1, 0.1], [0.0, 0.0, 0.1, 1]])
    assert cluster(corr, cut=0.5, max_size=10) == [[0, 1, 2], [3]]
    assert cluster(corr, cut=0.5, max_size=2) == [[0, 1], [2], [3]]
    assert cluster(corr, cut=0.05, max_size=10) == [[0], [1], [2], [3]]


def test_constant_and_text_columns_are_dropped_with_the_reason(tmp_path: Path) -> None:
    s = suggest([_write(tmp_path / "n.csv")])
    reasons = {d.column: d.reason for d in s.notes.dropped}
    assert set(reasons) == {"CONST", "STATE"}
    assert reasons["CONST"].startswith("constant (7.5 in every row)")
    assert reasons["STATE"].startswith("not numeric: 600 of 600 cells")
    text = render_yaml(s.config, s.notes)
    assert "#   CONST: constant" in text and "#   STATE: not numeric" in text
    assert all("CONST" not in g["tags"] and "STATE" not in g["tags"] for g in s.config["groups"])


def test_yaml_round_trips_and_fits(tmp_path: Path) -> None:
    data = _write(tmp_path / "n.csv")
    s = suggest([data])
    out = tmp_path / "groups.yaml"
    out.write_text(render_yaml(s.config, s.notes), encoding="utf-8")
    assert yaml.safe_load(out.read_text(encoding="utf-8")) == s.config  # the comments hide nothing
    config = load_config(out)
    assert config == AnomalyConfig.model_validate(s.config)
    det = offline.fit(config, [data], tmp_path / "model")
    assert {n: m.state for n, m in det.models.items()} == {g.name: "scoring" for g in config.groups}


def test_cli_writes_a_file_fit_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "n.csv")
    out = tmp_path / "g.yaml"
    args = _parse(["suggest", "--data", str(data), "--out", str(out), "--max-group-size", "3"])
    assert args.func(args) == 0
    groups = load_config(out).groups
    assert max(len(g.tags) for g in groups if g.name != "plant" and g.smoothing == 1) == 3
    fit = _parse(["fit", "--config", str(out), "--data", str(data), "--model", str(tmp_path / "m")])
    assert fit.func(fit) == 0


@pytest.mark.parametrize(
    ("make", "argv", "problem", "fix"),
    [
        ("text", [], "no numeric column with variation", "at least one numeric, varying tag column"),
        ("short", [], "needs at least", "supply more normal history"),
        ("no_ts", [], "cannot infer the sample period", "pass --interval-s"),
        ("ok", ["--max-group-size", "0"], "--max-group-size 0", "use 1 or more"),
    ],
)
def test_cli_errors_name_the_problem_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str, argv: list[str], problem: str, fix: str
) -> None:
    path = tmp_path / "n.csv"
    if make == "text":
        path.write_text("timestamp,STATE,CONST\n0,on,1\n10,off,1\n20,on,1\n", encoding="utf-8")
    else:
        _write(path, rows=40 if make == "short" else 300, timestamps=make != "no_ts")
    args = _parse(["suggest", "--data", str(path), *argv])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    message, _, advice = err.partition("Fix:")
    assert problem in message and fix in advice, err


def test_no_timestamp_column_with_interval(tmp_path: Path) -> None:
    config = suggest_config([_write(tmp_path / "n.csv", timestamps=False)], interval_s=60.0)
    assert {g["cadence_s"] for g in config["groups"]} == {60.0}


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown suggest option"):
        suggest_config([_write(tmp_path / "n.csv")], cutt=0.3)


def test_a_group_too_big_for_the_rows_is_left_out_and_said(tmp_path: Path) -> None:
    kept = [*BLOCK_A, *BLOCK_B, "NOISE"]
    averaged = TagGroup(name="plant_avg", tags=kept, smoothing=5, raise_after=2, clear_after=3)
    rows = min_training_vectors(averaged) - 1  # enough for the plain plant group, one short for the averaged one
    s = suggest([_write(tmp_path / "n.csv", rows=rows)])
    assert [g["name"] for g in s.config["groups"]][:1] == ["plant"]
    assert "plant_avg" not in {g["name"] for g in s.config["groups"]}
    text = render_yaml(s.config, s.notes)
    assert (
        f"#   plant_avg: group 'plant_avg' of 8 tags needs at least {rows + 1} rows of normal data, got {rows}" in text
    )
