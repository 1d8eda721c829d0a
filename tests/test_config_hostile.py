"""Configurations that are broken, hostile or that no one means get one clear line, in bounded time and memory (issue
13 item 11): an alias bomb, bad UTF-8, a binary file, nesting deep enough to exhaust the interpreter's stack, repeated
names, booleans taken as numbers, infinite or absurd intervals and sizes, an empty connection list."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.componentconfig import (
    ModbusCollectorConfig,
    OpcUaCollectorConfig,
    PublisherConfig,
    default_configuration,
)
from gateway.config import load_file, validate
from gateway.errors import ConfigError

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))

CASES = {
    "bomb.yaml": (_BOMB.encode(), "expands to more than"),
    "deep.json": (b"[" * 100_000, "nested too deeply"),
    "deep.yaml": (b"a:" + b" [" * 20_000, "nested too deeply"),
    "flowdeep.yaml": (b"a: " + b"{b: " * 150 + b"1" + b"}" * 150, "nested deeper than"),
    "latin1.yaml": ("destinations:\n  - name: Kühler\n".encode("latin-1"), "not UTF-8 text (invalid byte at line 2)"),
    "binary.yaml": (bytes(range(256)) * 4, "binary file"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_files_are_refused_quickly_with_one_line(tmp_path: Path, name: str) -> None:
    content, says = CASES[name]
    path = tmp_path / name
    path.write_bytes(content)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_file(PublisherConfig, path)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert says in text and str(path) in text and "Fix:" in text and "\n" not in text, text


def test_ordinary_anchors_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("destinations:\n"
                    "  - {type: file, name: a, path: a.jsonl, route: &r {streams: [factoryedge-opcua]}}\n"
                    "  - {type: file, name: b, path: b.jsonl, route: *r}\n")
    cfg = load_file(PublisherConfig, path)
    assert [d.route.streams for d in cfg.destinations] == [["factoryedge-opcua"]] * 2


REFUSED: dict[str, tuple[type[BaseModel], dict[str, Any], str]] = {
    "duplicate connection names": (OpcUaCollectorConfig, {"connections": [
        {"name": "a", "endpoint": "opc.tcp://h:1", "nodes": ["i=1"]},
        {"name": "a", "endpoint": "opc.tcp://h:2", "nodes": ["i=2"]}]}, "connections: "),
    "duplicate destination names": (PublisherConfig, {"destinations": [
        {"type": "file", "name": "d", "path": "a.jsonl"}, {"type": "file", "name": "d", "path": "b.jsonl"}]},
        "destinations: "),
    "port: true": (PublisherConfig, {"destinations": [{"type": "mqtt", "name": "m", "host": "h", "port": True}]},
                   "destinations.0.port: true is not a number"),
    "infinite interval": (PublisherConfig, {"status_interval_s": float("inf")}, "status_interval_s: inf"),
    "nan interval": (PublisherConfig, {"metrics_interval_s": float("nan")}, "metrics_interval_s: "),
    "1e308 timeout": (PublisherConfig, {"destinations": [{"type": "mqtt", "name": "m", "host": "h",
                                                          "ack_timeout_s": 1e308}]},
                      "destinations.0.ack_timeout_s: 1e+308 seconds"),
    "1e308 size": (OpcUaCollectorConfig, {"stream": {"name": "s", "max_size_bytes": 1e308}}, "stream.max_size_bytes"),
    "empty connection list": (ModbusCollectorConfig, {"connections": []}, "connections: "),
    "a stream manager stream that can jam": (ModbusCollectorConfig, {
        "store": {"kind": "stream_manager"}, "stream": {"name": "s", "strategy_on_full": "RejectNewData"}},
        "(top level): Value error, stream: RejectNewData without ttl_s"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_configurations_no_one_means_are_refused_with_one_line(case: str) -> None:
    model, data, names = REFUSED[case]
    with pytest.raises(ConfigError) as err:
        validate(model, data, origin="test")
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(names) and "Fix:" in err.value.problems[0], err.value.problems


def test_a_collector_left_without_connections_deploys_idle() -> None:
    assert validate(ModbusCollectorConfig, {}, origin="test").connections == []
    assert "connections" not in default_configuration("factoryedge.ModbusCollector")
