"""One counter vocabulary (gateway/counters.py, docs/counters.md) in status files, METRIC records and gatewayctl.

The names are taken from the components' real counter objects (the collector's ``Counters`` and status, the
publisher's ``DestinationCounters`` and metric records, the detector's engine, models and alarm events), never from
a copy; the CLI is run on status files made of them with every counter set to a distinct value, so that a CLI
reading a name the components no longer write (or a previous version's) shows the wrong number and fails here.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from gateway import counters as vocabulary
from gateway.anomaly.config import AlarmEvents, TagGroup
from gateway.anomaly.engine import Engine
from gateway.anomaly.events import AlarmPublisher
from gateway.anomaly.model import GroupModel
from gateway.cli import checks
from gateway.cli.main import main as gatewayctl
from gateway.collector import METRICS as COLLECTOR_METRICS
from gateway.collector import Collector, _Connection
from gateway.componentconfig import AnomalyDetectorConfig
from gateway.publisher_counters import DestinationCounters, metric_records
from gateway.record import MAX_VALUE_BYTES, Quality
from gateway.sources.common import ConnectionBase, Counters
from gateway.streams import PositionStore, StreamSpec, open_store
from gateway.streams.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "counters.md"
TAGS = ["a", "b"]


def documented() -> set[str]:
    """The names in the first column of the table of every counter and gauge in docs/counters.md."""
    table = DOC.read_text().split("## Every counter and gauge", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", table, flags=re.M))


def _leaf(tag: str) -> str:
    return tag.rsplit("/", 1)[-1]


def collector_names(tmp: Path) -> set[str]:
    collector = Collector("factoryedge.ModbusCollector", EmbeddedStore(tmp / "store"), StreamSpec(name="modbus"),
                          lambda cfg: None, status_dir=tmp / "status")  # type: ignore[arg-type,return-value]
    collector.connections["line1"] = _Connection(ConnectionBase(name="line1"),
                                                 lambda cfg: None)  # type: ignore[arg-type,return-value]
    conn = collector.connections["line1"]
    conn.emitter.emit("big", "x" * (MAX_VALUE_BYTES + 1), Quality.GOOD)  # an oversize value: its counter appears
    s = collector.status()
    header = set(collector.status_file.header()) | {"status_interval_s"}
    top = {k for k, v in s.items() if type(v) in (int, float) and k not in header}
    connection = s["connections"]["line1"]
    return top | set(connection) | set(connection["extra"]) | set(COLLECTOR_METRICS)


def publisher_names() -> set[str]:
    metrics = metric_records("factoryedge.Publisher", {"kinesis": DestinationCounters()}, time.time_ns(), 0)
    return set(asdict(DestinationCounters())) | {_leaf(r.tag) for r in metrics} | {"records_per_s"}


def detector_names(tmp: Path) -> set[str]:
    group = TagGroup.model_validate({"name": "unit", "tags": TAGS, "cadence_s": 1.0, "max_age_s": 2.5,
                                     "training_points": 100})
    cfg = AnomalyDetectorConfig.model_validate({
        "store": {"kind": "embedded", "path": str(tmp / "data")}, "model_dir": str(tmp / "model"),
        "input_streams": ["in"], "start_from": "oldest", "groups": [group.model_dump()]})
    store, positions = open_store(cfg.store)
    store.create_stream(StreamSpec(name="in"))
    engine = Engine(cfg, store, positions)
    try:
        engine.open()
        s = engine.status()
        metrics = set(engine.metric_values())
    finally:
        engine.close()
        store.close()
    inputs = {k for i in s["inputs"].values() for k in i if k not in ("state", "position", "committed")}
    events = {k for k, v in AlarmPublisher(AlarmEvents()).status().items() if isinstance(v, int) and
              not isinstance(v, bool)}
    return set(s["counters"]) | inputs | set(GroupModel(group).counters) | events | metrics


NAMES: dict[str, Callable[[Path], set[str]]] = {
    "collector": lambda tmp: collector_names(tmp / "c"),
    "publisher": lambda tmp: publisher_names(),
    "detector": lambda tmp: detector_names(tmp / "d"),
}


@pytest.mark.parametrize("component", ["collector", "publisher", "detector"])
def test_every_counter_a_component_writes_is_in_the_vocabulary_and_documented(component: str,
                                                                               tmp_path: Path) -> None:
    names: set[str] = NAMES[component](tmp_path)
    problems = [p for n in sorted(names) if (p := vocabulary.problem(n))]
    assert not problems, "\n".join(problems)
    missing = names - documented()
    assert not missing, f"{sorted(missing)}: not in the table of docs/counters.md"


def test_the_documented_table_has_no_name_that_nothing_writes(tmp_path: Path) -> None:
    written = set().union(*(names(tmp_path) for names in NAMES.values()))
    cli_only = {"last_good_read_age_s"}  # computed by gatewayctl from last_good_read_ns
    # OPC UA only: after a server dropped a subscription; a value of a kind no record carries; a gap read back
    # from the server's history
    with_a_peer = {"subscription_rebuilds", "undecodable_values_read", "history_values_read"}
    assert documented() - written - cli_only - with_a_peer == set()
    assert all(vocabulary.problem(n) is None for n in documented())


def test_the_vocabulary_rule_refuses_what_it_should() -> None:
    assert vocabulary.problem("records_sent") is None
    assert vocabulary.problem("gaps") is None
    assert "send_retries" in (vocabulary.problem("retries") or "")
    assert "does not end with a fate" in (vocabulary.problem("messages_frobbed") or "")
    assert vocabulary.problem("_read") is not None


# ---- the CLI reads the names the components write -----------------------------------------------------------

def _numbered(counters: dict[str, Any], start: int) -> dict[str, Any]:
    """Every counter of ``counters`` set to its own value (start, start+1...), so a misread name shows."""
    out = dict(counters)
    for i, k in enumerate(sorted(k for k, v in counters.items() if type(v) is int and vocabulary.problem(k) is None
                                 and k not in vocabulary.GAUGES)):
        out[k] = start + i
    return out


def _status_files(folder: Path, connection: dict[str, Any], destination: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    now = time.time_ns()
    head = {"pid": os.getpid(), "started_ns": now, "updated_ns": now, "status_interval_s": 2.0}
    (folder / "factoryedge.ModbusCollector.json").write_text(json.dumps(
        {**head, "component": "factoryedge.ModbusCollector", "connections": {"line1": connection}}))
    (folder / "factoryedge.Publisher.json").write_text(json.dumps(
        {**head, "component": "factoryedge.Publisher", "destinations": {"kinesis": destination}}))


def _collect(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    gatewayctl(["--json", "--store", str(store), "status"])
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def _new_files(tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    connection = _numbered({**Counters().as_dict(), "connected": False, "last_good_read_ns": time.time_ns()}, 100)
    destination = _numbered(asdict(DestinationCounters()), 200)
    _status_files(tmp / "store" / "status", connection, destination)
    return connection, destination


def test_gatewayctl_status_shows_the_counters_under_the_names_the_components_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    connection, destination = _new_files(tmp_path)
    data = _collect(tmp_path / "store", capsys)
    for row, written in ((data["connections"][0], connection), (data["destinations"][0], destination)):
        counters = {k for k in row if vocabulary.problem(k) is None and k not in vocabulary.GAUGES}
        assert counters, row
        for k in counters:
            assert row[k] == written[k], f"gatewayctl status shows {k}={row[k]}, the status file says {written[k]}"
        unknown = {k for k in row if vocabulary.problem(k)} - {"component", "name", "stale"}
        assert not unknown, f"gatewayctl status names {sorted(unknown)} outside the vocabulary"


def test_doctor_reads_the_counters_under_the_names_the_components_write() -> None:
    now = time.time_ns()
    c = _numbered(Counters().as_dict(), 100)
    down = checks.source_counters("line1", {**c, "connected": False}, 60.0, now)
    assert f"{c['connect_retries']} reconnects" in down.detail
    up = checks.source_counters("line1", {**c, "connected": True, "last_good_read_ns": now}, 60.0, now)
    assert f"{c['bad_values_read']} of {c['values_read']} values BAD" in up.detail
    d = _numbered(asdict(DestinationCounters()), 200)
    dead = checks.destination_counters("kinesis", {**d, "dead_letter_reasons": {"too big": 1}}, 60.0, now)
    assert f"{d['records_dead_lettered']} records refused" in dead[-1].detail


def test_gatewayctl_status_reads_the_status_file_of_the_previous_version(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway upgraded in place: its status files keep the old names until the components rewrite them."""
    connection, destination = _new_files(tmp_path)
    new = _collect(tmp_path / "store", capsys)
    old_names = {new_name: old for old, new_name in vocabulary.RENAMED.items()}
    (tmp_path / "store" / "status").rename(tmp_path / "new")
    _status_files(tmp_path / "store" / "status", {old_names.get(k, k): v for k, v in connection.items()},
                  {old_names.get(k, k): v for k, v in destination.items()})
    assert "reconnects" in json.loads((tmp_path / "store" / "status" / "factoryedge.ModbusCollector.json")
                                      .read_text())["connections"]["line1"]
    old = _collect(tmp_path / "store", capsys)
    for part in ("connections", "destinations"):
        assert [{k: v for k, v in r.items() if not k.endswith("age_s")} for r in old[part]] == \
            [{k: v for k, v in r.items() if not k.endswith("age_s")} for r in new[part]]
    now = time.time_ns()
    c = {old_names.get(k, k): v for k, v in _numbered(Counters().as_dict(), 100).items()}
    assert f"{c['reconnects']} reconnects" in checks.source_counters("x", c, 60.0, now).detail


def test_loss_counts_written_by_the_previous_version_go_on_under_todays_names(tmp_path: Path) -> None:
    """``<owner>/<stream>.lost`` of an old gateway said lost_messages: shown, added to and acknowledged as
    messages_lost (gatewayctl status, buffer, doctor)."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "s.lost").write_text(json.dumps({"lost_messages": 3, "lost_through_seq": 10}))
    positions = PositionStore(tmp_path)
    assert positions.losses()[0]["unacknowledged"] == {"messages_lost": 3}
    assert positions.count_gap("dest", "s", 10, 12) == 2
    assert positions.losses()[0]["counts"]["messages_lost"] == 5
    positions.acknowledge()
    assert positions.losses()[0]["unacknowledged"] == {}
