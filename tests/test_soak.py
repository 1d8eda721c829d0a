"""The soak (bench/soak.py) in its short version: half a minute of kills, link faults, a broker restart, full
streams and a full disk against the whole gateway, then every stored record must have reached every destination.

This is the suite's slow test (about 40 s); `make soak` runs the 20-minute version. The plan keeps every kind of
fault and at least 6 kills whatever the length, so a shorter run is denser, not thinner. It was two minutes, then one
(63 s in the CI of 2026-12-03, whose pytest took 870 of make test's 15 minutes); three half-minute runs before this
change: 11-12 kills each, nothing lost, no crash loops, 35-41 s each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import run

pytestmark = pytest.mark.slow


def test_soak_half_a_minute_loses_nothing(tmp_path: Path) -> None:
    metrics = run(0.5, tmp_path / "soak.json", tmp_path / "run")
    report = json.loads((tmp_path / "run" / "soak-report.json").read_text())
    evidence = json.dumps({k: report[k] for k in ("lost_ids", "file_torn_lines", "crash_loops", "notes")})
    for destination in ("file", "mqtt", "kinesis"):
        assert metrics[f"soak.{destination}.stored"] > 0, evidence
        assert metrics[f"soak.{destination}.lost"] == 0, evidence
    assert metrics["soak.crash_loops"] == 0, report["unexpected_exits"]
    assert metrics["soak.kills"] >= 6
    assert metrics["soak.duplicates_max"] <= metrics["soak.kills"] + 1
    assert metrics["soak.soak-reject.rejected_appends"] > 0 and metrics["soak.soak-overwrite.dropped_messages"] > 0
