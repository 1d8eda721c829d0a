"""Fixtures for the anomaly tests; their helpers (a synthetic process and the rest) are in tests/support/anomaly.py."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["krcf", "rrcf"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test over both forest backends."""
    return str(request.param)
