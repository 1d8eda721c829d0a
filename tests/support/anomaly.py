"""Inputs for the anomaly detector without a simulator: a small correlated synthetic process (so tests run in
seconds), the records a collector would deliver for it, and the detector's engine over an embedded store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly import AnomalyConfig, TagGroup
from gateway.anomaly.engine import Engine
from gateway.componentconfig import AnomalyDetectorConfig
from gateway.record import Quality, Record, make_record
from gateway.streams import RecordWriter, StreamSpec, StreamStore, open_store

TAGS = ["flow", "pressure", "temp", "level", "valve", "power"]
NS = 1_000_000_000
T0 = 1_700_000_000 * NS
IN = "factoryedge-opcua"  # the detector's input stream in these tests
OUT = "factoryedge-anomaly"  # and its output stream


def synthetic(n: int, seed: int, shift: dict[str, float] | None = None, start: int = 0) -> np.ndarray:
    """``n`` rows of 6 tags from 2 latent factors plus noise; ``shift`` steps named tags from row ``start``."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.2], [0.8, -0.5], [0.1, 1.0], [0.5, 0.5], [-0.7, 0.3], [0.3, -0.9]])
    data = latent @ mix.T + 0.1 * rng.normal(size=(n, len(TAGS)))
    data = data * np.array([10, 2, 1, 5, 3, 50]) + np.array([100, 20, 80, 50, 40, 1000])
    for tag, size in (shift or {}).items():
        data[start:, TAGS.index(tag)] += size
    return np.asarray(data, dtype=np.float64)


def group(**overrides: Any) -> TagGroup:
    """A fast group over the synthetic tags (few small trees), one vector a second."""
    spec: dict[str, Any] = {
        "name": "unit",
        "tags": TAGS,
        "shingle": 2,
        "forest": {"backend": "krcf", "trees": 30, "samples_per_tree": 64, "seed": 3},
        "cadence_s": 1.0,
        "max_age_s": 2.5,
        "false_alarm_rate": 0.01,
        "raise_after": 3,
        "clear_after": 4,
        "training_points": 400,
    }
    spec.update(overrides)
    return TagGroup.model_validate(spec)


def config(**overrides: Any) -> AnomalyConfig:
    """One-group detector config."""
    return AnomalyConfig(groups=[group(**overrides)])


def records(row: np.ndarray, ts_ns: int, tags: list[str] = TAGS) -> Iterator[Record]:
    """One record per tag of a row, as a collector would deliver them."""
    for i, (tag, value) in enumerate(zip(tags, row, strict=True)):
        yield make_record("plc", tag, float(value), seq=i, source_ts_ns=ts_ns, gateway_ts_ns=ts_ns)


def bad(tag: str, ts_ns: int) -> Record:
    """A BAD-quality record with no value."""
    return Record("plc", tag, None, Quality.BAD, ts_ns, ts_ns, 99)
def detector_config(tmp: Path, groups: list[dict[str, Any]] | None = None, **over: Any) -> AnomalyDetectorConfig:
    """The detector's configuration over an embedded store in ``tmp``, one fast group by default; ``over`` overrides."""
    spec: dict[str, Any] = {
        "store": {"kind": "embedded", "path": str(tmp / "data")},
        "model_dir": str(tmp / "model"),
        "input_streams": [IN, "factoryedge-modbus"],  # the second never exists: waited for, not an error
        "start_from": "oldest",
        "groups": groups if groups is not None else [group().model_dump()],
        "status_interval_s": 0.1,
        **over,
    }
    return AnomalyDetectorConfig.model_validate(spec)


def stepped_data() -> np.ndarray:
    """400 normal rows (the learning window), then 100 with the valve stepped from row 420."""
    return np.vstack([synthetic(400, seed=1), synthetic(100, seed=2, shift={"valve": 4.0}, start=20)])


def write_rows(store: StreamStore, rows: np.ndarray, first: int, tags: list[str] = TAGS) -> None:
    """Write ``rows`` to the input stream as a collector would, row ``k`` stamped ``T0 + k`` seconds from ``first``."""
    store.create_stream(StreamSpec(name=IN))
    writer = RecordWriter(store, IN)
    for k, row in enumerate(rows, start=first):
        writer.write(list(records(row, T0 + k * NS, tags)))


def drain(engine: Engine) -> list[dict[str, Any]]:
    """Step ``engine`` until it has no input left; the events it raised, as JSON."""
    events = []
    while True:
        out = engine.step()
        events += [e.as_json() for e in out.events]
        if not out.messages:
            return events


def make_engine(tmp: Path, **over: Any) -> tuple[Engine, StreamStore]:
    """An open engine (and its store) configured by :func:`detector_config`."""
    cfg = detector_config(tmp, **over)
    store, positions = open_store(cfg.store)
    engine = Engine(cfg, store, positions)
    engine.open()
    return engine, store
