"""Fixtures for the anomaly tests; their helpers (a synthetic process and the rest) are in tests/support/anomaly.py."""

from __future__ import annotations

import pytest

import gateway.anomaly.model as model

# rrcf (pure Python) scores a point by inserting it into every tree and deleting it again, so a fit's probe of the
# score scale (model.PROBE_POINTS points, for each of the fit's forests) took 80 % of an rrcf fit and 90 s of one
# test. The tests that run rrcf check what the backends do, not the precision of the scale, which
# tests/anomaly/test_calibration.py checks with the full probe.
SMALL_PROBE = 200


@pytest.fixture
def small_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe the score scale with SMALL_PROBE points instead of model.PROBE_POINTS."""
    monkeypatch.setattr(model, "PROBE_POINTS", SMALL_PROBE)


@pytest.fixture(params=["krcf", "rrcf"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over both forest backends (rrcf with the small probe)."""
    if request.param == "rrcf":
        monkeypatch.setattr(model, "PROBE_POINTS", SMALL_PROBE)
    return str(request.param)
