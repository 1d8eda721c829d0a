"""The walk-through destination (tests/support/example_destination.py) added without touching the product:
validated, built and run by the publisher's own entry point, dead letters included, and diagnosed by doctor."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from devkit.peers import wait_for
from gateway.cli import doctor
from gateway.cli.configs import LoadedConfig
from gateway.componentconfig import PublisherConfig, publisher_config_with
from gateway.diagnostics import passed
from gateway.publisher_component import run as run_publisher
from gateway.runtime import Context
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore
from tests.support.example_destination import COUNTED, NullConfig
from tests.support.publisher import fill_values

PUBLISHER = "factoryedge.Publisher"


def _config(tmp: Path, **null: object) -> PublisherConfig:
    return publisher_config_with(NullConfig).model_validate({
        "store": {"kind": "embedded", "path": str(tmp / "store")},
        "status_interval_s": 0.2,
        "destinations": [{"type": "null", "name": "counted", "route": {"streams": ["values"]}, **null}],
    })


def test_the_example_runs_through_the_publisher_entry_point(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 700)  # tags line/temp0 .. line/temp6, 100 records each
    store.close()
    cfg = _config(tmp_path, refuse_tag="line/temp3")
    COUNTED.clear()

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_publisher(Context(PUBLISHER, cfg, stop)))
        await asyncio.to_thread(wait_for, lambda: COUNTED["counted"] >= 600 or task.done(), 30, "600 records counted")
        stop.set()
        await task

    asyncio.run(body())
    assert COUNTED["counted"] == 600
    store = EmbeddedStore(tmp_path / "store")
    try:
        dead = RecordReader(store, cfg.dead_letter_stream, "t", PositionStore(tmp_path / "p")).poll(
            max_messages=1000, timeout_s=0).records
    finally:
        store.close()
    assert len(dead) == 100 and {r.tag for r in dead} == {"line/temp3"}


def test_the_product_union_does_not_know_the_example() -> None:
    with pytest.raises(ValidationError, match="null"):
        PublisherConfig.model_validate({"destinations": [{"type": "null", "name": "counted"}]})


def test_doctor_asks_the_model_whatever_its_module_is_named(tmp_path: Path) -> None:
    """The example's module is not gateway/destinations/null.py: doctor still runs its diagnose (it used to fall
    back to a TCP check, 'no network endpoint to check for this type', for any module not named after the type)."""
    loaded = [LoadedConfig(component=PUBLISHER, origin="test", config=_config(tmp_path))]
    args = argparse.Namespace(timeout=2.0, max_age=60.0)
    sections = dict(asyncio.run(doctor._peer_checks(args, loaded, {}, time.time_ns())))
    found = sections["destination counted (null)"]
    assert found[0] == passed("null destination", "counted counts records; there is no peer to reach"), found
