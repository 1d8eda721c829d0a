"""The components' garbage collector settings (gateway.runtime.tune_gc, issue 18)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway import runtime


@pytest.fixture
def gc_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class _Config(BaseModel):
    name: str = "x"


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold(gc_restored: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    runtime.tune_gc()
    assert gc.get_threshold() == runtime.GC_THRESHOLDS
    assert runtime.GC_THRESHOLDS[0] > 700  # Python's default young threshold
    # what the test process imported so far is out of the collector's reach now
    assert gc.get_freeze_count() > 10_000


def test_a_component_runs_with_the_collector_tuned(gc_restored: None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(coro: Any) -> None:  # stands in for asyncio.run: what the event loop would start with
        coro.close()
        seen["thresholds"], seen["frozen"] = gc.get_threshold(), gc.get_freeze_count()

    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr("gateway.runtime.asyncio.run", run)
    monkeypatch.setattr(runtime, "setup_logging", lambda *a, **k: None)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "y"}))

    async def component(ctx: Any) -> None:
        raise AssertionError("not started: asyncio.run is replaced")

    assert runtime.component_main("factoryedge.Test", _Config, component, ["--config", str(path)]) == 0
    assert seen["thresholds"] == runtime.GC_THRESHOLDS
    assert seen["frozen"] > 0


def test_a_rejected_configuration_exits_before_tuning(gc_restored: None, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(runtime, "setup_logging", lambda *a, **k: None)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": 3}))

    async def component(ctx: Any) -> None:
        raise AssertionError("not started")

    code = runtime.component_main("factoryedge.Test", _Config, component, ["--config", str(path)])
    assert code == runtime.EXIT_CONFIG
    assert gc.get_threshold() == (700, 10, 10)
