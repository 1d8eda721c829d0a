"""Fixtures for the stream contract: every test in test_contract.py runs over every implementation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.streams.base import StreamStore
from gateway.streams.embedded import EmbeddedStore
from tests.support.stream_manager import stream_manager_factory

# Each factory takes a fresh folder and returns (store, cleanup). Implementations register here.
STORE_FACTORIES: dict[str, Callable[[Path], tuple[StreamStore, Callable[[], None]]]] = {}


def _embedded(tmp: Path) -> tuple[StreamStore, Callable[[], None]]:
    store = EmbeddedStore(tmp)
    return store, store.close


STORE_FACTORIES["embedded"] = _embedded
STORE_FACTORIES["stream_manager"] = stream_manager_factory  # the real SDK against our protocol server


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StreamStore]:
    made, cleanup = STORE_FACTORIES[request.param](tmp_path)
    try:
        yield made
    finally:
        cleanup()
