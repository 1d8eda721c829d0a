"""A part that fails stays alone: a full disk, a corrupt position file, a destination that cannot start or a bug in
one task is logged once, shown in the status (``last_error``, ``gatewayctl status``) and retried with backoff, while
everything else keeps working; the part resumes by itself once the cause is gone.

Disk full is real: a 1 MiB tmpfs (root, as on the CI's Debian machine) filled to the last byte, then freed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.anomaly.component import AnomalyComponent
from gateway.cli.main import main as gatewayctl
from gateway.componentconfig import AnomalyDetectorConfig, PublisherConfig
from gateway.config import validate
from gateway.destinations.base import Route, SendResult
from gateway.destinations.file import FileConfig, FileDestination
from gateway.destinations.mqtt import MqttConfig, MqttTls
from gateway.errors import ConfigError
from gateway.fsutil import atomic_write
from gateway.publisher import Publisher
from gateway.record import Record
from gateway.runtime import Context
from gateway.status import StatusFile
from gateway.streams import PositionStore, RecordWriter, StreamSpec, open_store
from gateway.streams.embedded import EmbeddedStore
from tests.support.anomaly import NS, T0, group, records, synthetic
from tests.support.publisher import fill_values, read_jsonl

ROUTE = Route(streams=["values"])
STATUS = "factoryedge.Publisher.json"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that can really be filled and freed again."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(mnt: Path) -> Path:
    """Fill the disk to the last byte; return the file to delete to free it."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def _until(pub: Publisher, stop: asyncio.Event, cond: Any, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# ---- atomic writes and status files -------------------------------------------------------------------------


def test_atomic_write_removes_its_temporary_file_when_the_replace_fails(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "inside").write_text("a folder where the file should be: the replace fails")
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_atomic_write_on_a_full_disk_removes_its_temporary_file(small_disk: Path) -> None:
    with pytest.raises(OSError) as caught:
        atomic_write(small_disk / "big", b"x" * (2 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []


def test_status_file_survives_a_full_disk_logs_once_and_writes_again(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = small_disk / "status"
    folder.mkdir()
    filler = _fill_disk(small_disk)
    status = StatusFile("factoryedge.Test", folder)
    with caplog.at_level(logging.INFO, logger="gateway.runtime"):
        for i in range(3):
            status.write({"n": i})  # raised OSError before: the collector's status loop died of it
        assert len(_messages(caplog, "status file")) == 1
        assert list(folder.iterdir()) == []  # and no temporary file left behind
        filler.unlink()
        status.write({"n": 3})
    assert json.loads((folder / "factoryedge.Test.json").read_text()) == {"n": 3}
    assert len(_messages(caplog, "status file")) == 2  # the failure, and that it is written again


# ---- the publisher ------------------------------------------------------------------------------------------


def test_publisher_survives_a_full_disk_and_resumes_when_space_returns(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EmbeddedStore(tmp_path / "store")  # the data is elsewhere; positions and status are on the full disk
    records = fill_values(store, 500)
    positions = PositionStore(small_disk / "positions")
    (small_disk / "status").mkdir()
    out = tmp_path / "out.jsonl"
    cfg = FileConfig(name="f", path=str(out), route=ROUTE, batch_messages=2, retry_min_s=0.05,
                          retry_max_s=0.2)
    pub = Publisher(store, positions, {"f": (cfg, FileDestination(cfg))}, dead_letter_stream="dlq",
                    metrics_stream="metrics", status_dir=small_disk / "status", status_interval_s=0.1)
    filler = _fill_disk(small_disk)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        await _until(pub, stop, lambda: "No space left" in pub.counters["f"].last_error)
        assert len(read_jsonl(out)) == 100  # the first batch went out; nothing more until its position is recorded
        freed_ns = time.time_ns()
        filler.unlink()
        await _until(pub, stop, lambda: len(read_jsonl(out)) >= 500
                     and positions.get("f", "values") == store.describe("values").next_seq)
        status_path = small_disk / "status" / STATUS
        await _until(pub, stop, lambda: status_path.exists()
                     and json.loads(status_path.read_text())["updated_ns"] > freed_ns)
        assert not task.done()
        stop.set()
        await task
        assert json.loads(status_path.read_text())["destinations"]["f"]["records_sent"] == 500

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    ids = [line["id"] for line in read_jsonl(out)]
    assert ids == [r.id for r in records]  # nothing lost, nothing twice
    assert pub.counters["f"].last_error == ""
    assert len(_messages(caplog, "cannot record its position")) == 1
    assert len(_messages(caplog, "cannot write its status file")) == 1


def test_corrupt_position_file_fails_that_pump_alone_visibly_and_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = fill_values(store, 300)
    positions = PositionStore(tmp_path / "positions")
    bad_pos = tmp_path / "positions" / "a" / "values.pos"
    bad_pos.parent.mkdir(parents=True)
    bad_pos.write_text("{not json")
    dests = {n: FileConfig(name=n, path=str(tmp_path / f"{n}.jsonl"), route=ROUTE, retry_min_s=0.05,
                                retry_max_s=0.2) for n in ("a", "b")}
    pub = Publisher(store, positions, {n: (c, FileDestination(c)) for n, c in dests.items()}, dead_letter_stream="dlq",
                    metrics_stream="metrics", status_dir=tmp_path / "store" / "status", status_interval_s=0.1)
    status_path = tmp_path / "store" / "status" / STATUS

    def shown() -> dict[str, Any]:
        return json.loads(status_path.read_text())["destinations"]["a"] if status_path.exists() else {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        await _until(pub, stop, lambda: len(read_jsonl(tmp_path / "b.jsonl")) >= 300
                     and "corrupt" in shown().get("last_error", "") and shown().get("restarts", 0) >= 2)
        assert read_jsonl(tmp_path / "a.jsonl") == []
        assert gatewayctl(["--store", str(tmp_path / "store"), "status"]) in (0, 1)
        screen = capsys.readouterr().out
        rows = screen.split("DESTINATION")[1].splitlines()
        assert any(line.startswith("a ") and "reader position file" in line for line in rows), screen
        assert any("is corrupt" in line and "Fix: delete the file" in line for line in rows), screen
        bad_pos.unlink()  # the fix the error names: the pump restarts by itself and delivers
        await _until(pub, stop, lambda: len(read_jsonl(tmp_path / "a.jsonl")) >= 300)
        stop.set()
        await task

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert [r["id"] for r in read_jsonl(tmp_path / "a.jsonl")] == [r.id for r in records]
    assert len(_messages(caplog, "corrupt")) == 1  # restarted several times, logged once


class _BrokenStart:
    """A destination with a bug: start() raises something no one planned for."""

    def __init__(self) -> None:
        self.name = "broken"
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        raise RuntimeError("bug in start")

    async def send(self, records: list[Record]) -> SendResult:
        raise AssertionError("never started, never sent to")

    async def close(self, timeout_s: float) -> None: ...


def test_a_destination_that_cannot_start_is_isolated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 200)
    ok = FileConfig(name="ok", path=str(tmp_path / "ok.jsonl"), route=ROUTE)
    broken_cfg = FileConfig(name="broken", route=ROUTE, retry_min_s=0.05, retry_max_s=0.1)
    broken = _BrokenStart()
    # A CA file deleted after validation: the MQTT destination fails at start, the others run.
    ca = tmp_path / "missing-ca.pem"
    ca.write_text("not yet deleted")
    mqtt_cfg = MqttConfig(name="m", host="127.0.0.1", port=1, route=ROUTE, tls=MqttTls(ca_file=str(ca)),
                               retry_min_s=0.05, retry_max_s=0.1)
    ca.unlink()
    pub = Publisher(store, PositionStore(tmp_path / "positions"),
                    {"broken": (broken_cfg, broken), "m": (mqtt_cfg, mqtt_cfg.build()),
                     "ok": (ok, FileDestination(ok))},
                    dead_letter_stream="dlq", metrics_stream="metrics", status_dir=tmp_path / "status",
                    status_interval_s=0.1)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        await _until(pub, stop, lambda: len(read_jsonl(tmp_path / "ok.jsonl")) >= 200 and broken.starts >= 3
                     and "missing-ca.pem" in pub.counters["m"].last_error)
        stop.set()
        await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "bug in start" in pub.counters["broken"].last_error
    assert len(_messages(caplog, "bug in start")) == 1


# ---- the anomaly detector -----------------------------------------------------------------------------------


def test_detector_loop_failure_is_supervised_shown_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = AnomalyDetectorConfig.model_validate({
        "store": {"kind": "embedded", "path": str(tmp_path / "data")}, "model_dir": str(tmp_path / "model"),
        "input_streams": ["in"], "start_from": "oldest", "groups": [group().model_dump()],
        "status_interval_s": 0.1})
    store, positions = open_store(cfg.store)
    store.create_stream(StreamSpec(name="in"))
    writer = RecordWriter(store, "in")
    for k, row in enumerate(synthetic(50, seed=1)):
        writer.write(list(records(row, T0 + k * NS)))
    bad_pos = Path(cfg.store.path) / "positions" / "factoryedge.AnomalyDetector" / "in.pos"
    bad_pos.parent.mkdir(parents=True, exist_ok=True)
    bad_pos.write_text("garbage")
    component = AnomalyComponent(cfg)
    status_path = component.status_path()

    def status() -> dict[str, Any]:
        return json.loads(status_path.read_text()) if status_path.exists() else {}

    async def scenario() -> None:
        ctx: Context[AnomalyDetectorConfig] = Context("factoryedge.AnomalyDetector", cfg, asyncio.Event())
        task = asyncio.create_task(component.serve(ctx))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "corrupt" not in status().get("last_error", "") or status()["tasks"]["engine"]["restarts"] < 2:
            assert loop.time() < deadline and not task.done(), (status(), task.done() and task.exception())
            await asyncio.sleep(0.05)
        assert gatewayctl(["--store", cfg.store.path, "status"]) in (0, 1)
        screen = capsys.readouterr().out
        assert "corrupt" in screen, screen
        bad_pos.unlink()
        while status().get("counters", {}).get("records_read", 0) < 50 * 6:
            assert loop.time() < deadline and not task.done(), status()
            await asyncio.sleep(0.05)
        ctx.stop.set()
        await task

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert len(_messages(caplog, "corrupt")) == 1
    store.close()
    del positions


# ---- configuration ------------------------------------------------------------------------------------------


def _problems(spec: dict[str, Any]) -> list[str]:
    try:
        validate(PublisherConfig, {"destinations": [spec]}, origin="test")
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "key_file"])
def test_mqtt_tls_file_that_does_not_exist_is_refused_with_one_line(tmp_path: Path, field: str) -> None:
    present = tmp_path / "present.pem"
    present.write_text("pem")
    tls = {"ca_file": str(present), "cert_file": str(present), "key_file": str(present),
           field: str(tmp_path / "missing.pem")}
    problems = _problems({"type": "mqtt", "name": "m", "host": "h", "port": 8883, "tls": tls,
                          "password": "pw"})  # not also "a password without tls": tls is set, its file is missing
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"destinations.0.mqtt.tls.{field}:") and "missing.pem" in problems[0]


def test_config_check_refuses_a_missing_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "publisher.yaml"
    path.write_text(json.dumps({"destinations": [
        {"type": "file", "name": "f", "path": str(tmp_path / "o.jsonl")},
        {"type": "mqtt", "name": "m", "host": "h", "port": 8883, "tls": {"ca_file": str(tmp_path / "ca.pem")}}]}))
    code = gatewayctl(["config", "check", str(path), "--component", "factoryedge.Publisher"])
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if "tls.ca_file" in x]
    assert code != 0 and len(lines) == 1 and "destinations.1" in lines[0], captured


@pytest.mark.parametrize(("kind", "extra"), [("mqtt", {"host": "h"}), ("iotcore", {})])
def test_topic_template_with_an_unknown_field_is_refused_with_one_line(kind: str, extra: dict[str, Any]) -> None:
    spec = {"type": kind, "name": "d", "topic": "plant/{site}/{nosuch}/{tag}", "topic_vars": {"site": "s1"}, **extra}
    problems = _problems(spec)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"destinations.0.{kind}.topic:") and "names {nosuch}, which no record has" in \
        problems[0]
    assert _problems({**spec, "topic": "plant/{site}/{group}/{tag}"}) == []
    assert len(_problems({**spec, "topic": "plant/{}"})) == 1
