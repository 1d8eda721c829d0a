"""factoryedge.AnomalyDetector on real streams (embedded store): the engine, the asyncio component with alarm
events over the real awsiotsdk client (devkit.ipc_server), restart and crash replay, bad input, the entry
point and ``gatewayctl anomaly status``."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from devkit.ipc_server import IpcServer
from devkit.peers import ROOT, start, wait_for
from gateway.anomaly import AnomalyConfig, offline, persist
from gateway.anomaly.component import AnomalyComponent
from gateway.cli.main import main as gatewayctl
from gateway.codec import decode_batch
from gateway.ipc import GreengrassIpc
from gateway.record import Kind, Record
from gateway.runtime import Context
from gateway.streams import PositionStore, StreamStore, open_store
from tests.support.anomaly import (
    IN,
    NS,
    OUT,
    T0,
    TAGS,
    detector_config,
    drain,
    group,
    make_engine,
    stepped_data,
    synthetic,
    write_rows,
)

COMPONENT = "factoryedge.AnomalyDetector"


def _outputs(store: StreamStore, kinds: tuple[Kind, ...] = (Kind.SCORE, Kind.ALARM)) -> list[tuple[str, int, Any]]:
    found: list[Record] = []
    for msg in store.read(OUT, 0, max_count=100_000):
        found += decode_batch(msg.payload)
    return [(r.tag, r.source_ts_ns, r.value) for r in found if r.kind in kinds]


def test_the_component_scores_a_stream_exactly_as_the_offline_replay(tmp_path: Path) -> None:
    """The streaming path (records, source-time clock, gated updates) is the path the evaluation measures."""
    g = group()
    head = ["timestamp", *TAGS]
    for name, rows, first in (("train", synthetic(400, seed=1), 0), ("test", stepped_data()[400:], 400)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows([T0 // NS + k, *(f"{v:.17g}" for v in row)] for k, row in enumerate(rows, start=first))
    offline.fit(AnomalyConfig(groups=[g]), [tmp_path / "train.csv"], tmp_path / "fitted")
    shutil.copytree(tmp_path / "fitted", tmp_path / "model")
    expected = offline.score(tmp_path / "fitted", tmp_path / "test.csv", None, updates="gated")

    engine, store = make_engine(tmp_path)
    assert engine.restore == "restored"
    write_rows(store, stepped_data()[400:], 400)  # %.17g in the CSV round-trips every float exactly
    drain(engine)
    got = [v for tag, _ts, v in _outputs(store, (Kind.SCORE,))]
    want = [r["score_unit"] for r in expected if r["score_unit"] != ""]
    assert len(got) == len(want) - 1  # the last tick is assembled when a newer record (or late_s) arrives
    assert got == pytest.approx(want[:-1], rel=1e-9)
    assert any(tag.endswith("/alarm") for tag, _ts, _v in _outputs(store, (Kind.ALARM,)))


def test_restart_continues_identically_and_a_crash_never_scores_twice(tmp_path: Path) -> None:
    data = stepped_data()
    ref, ref_store = make_engine(tmp_path / "ref")
    write_rows(ref_store, data, 0)
    ref_events = drain(ref)
    reference = _outputs(ref_store)
    assert [e["event"] for e in ref_events] == ["raised"]
    assert [str(v).split(":")[0] for t, _ts, v in reference if t == "anomaly/unit/attribution"] == ["valve"]

    # clean stop after 410 rows (scoring, before the fault), start again: restored, the same records
    first, store = make_engine(tmp_path / "clean")
    write_rows(store, data[:410], 0)
    drain(first)
    first.close()
    second, _ = make_engine(tmp_path / "clean")
    assert second.restore == "restored"
    assert second.det.models["unit"].state == "scoring"
    write_rows(store, data[410:], 410)
    drain(second)
    assert _outputs(store) == reference
    states = [v for _t, _ts, v in _outputs(store, (Kind.METRIC,))]
    assert states == ["learning", "scoring", "scoring"]  # announced again on restart, never "learning"

    # crash: saved at 410 rows, 30 more scored and written (the alarm raised), then the process dies
    crashed, store = make_engine(tmp_path / "crash")
    write_rows(store, data[:410], 0)
    drain(crashed)
    assert crashed.save()
    write_rows(store, data[410:440], 410)
    events = drain(crashed)
    assert [e["event"] for e in events] == ["raised"]
    del crashed  # no close(): the input since the save is read again
    again, _ = make_engine(tmp_path / "crash")
    assert again.restore == "restored"
    write_rows(store, data[440:], 440)
    assert drain(again) == []  # the raise is not sent a second time
    assert again.counters["records_suppressed"] > 0
    assert _outputs(store) == reference  # every tick exactly once, same values
    # and the sequence of every output tag keeps rising across the crash (it restarted from 0: out of order)
    highest: dict[str, int] = {}
    for msg in store.read(OUT, 0, max_count=100_000):
        for r in decode_batch(msg.payload):
            assert r.seq > highest.get(r.tag, -1), f"{r.tag}: seq {r.seq} after {highest[r.tag]}"
            highest[r.tag] = r.seq


def test_component_over_ipc_learns_raises_publishes_and_takes_a_new_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="ipc"))  # Unix socket paths are limited to 107 bytes
    socket_path = sock_dir / "ipc.sock"
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", str(socket_path))
    monkeypatch.setenv("SVCUID", "tok-anomaly")
    monkeypatch.setenv("AWS_IOT_THING_NAME", "line1-gw")
    cfg = detector_config(tmp_path)

    async def until(what: str, cond: Any, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    def status() -> dict[str, Any]:
        try:
            return dict(json.loads((tmp_path / "data" / "status" / f"{COMPONENT}.json").read_text()))
        except (OSError, ValueError):
            return {}

    async def scenario() -> None:
        server = IpcServer(socket_path, {"tok-anomaly": COMPONENT, "tok-hmi": "local.Hmi"})
        await server.start()
        hmi = await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="tok-hmi")
        received: list[tuple[str, dict[str, Any]]] = []
        await hmi.subscribe_to_topic("factoryedge/alarms/+", lambda t, p: received.append((t, json.loads(p))))
        ctx = Context(COMPONENT, cfg, asyncio.Event())
        component = AnomalyComponent(cfg)
        task = asyncio.create_task(component.serve(ctx))
        try:
            await until("the component waiting for its inputs", lambda: status().get("inputs", {}).get(IN))
            assert status()["inputs"]["factoryedge-modbus"] == {"state": "waiting"}
            store, _ = open_store(cfg.store)
            write_rows(store, stepped_data(), 0)
            await until("an alarm event on local pub/sub", lambda: received)
            topic, event = received[0]
            assert topic == "factoryedge/alarms/unit"
            assert event["group"] == "unit" and event["event"] == "raised" and event["score"] > 1.0
            assert event["top_tags"][0]["tag"] == "valve" and event["time"].startswith("2023-11-14T")
            await until("the IoT Core copy", lambda: server.published)
            assert server.published[0].topic == "factoryedge/line1-gw/alarms/unit"
            assert json.loads(server.published[0].payload) == event
            await until("status with the alarm", lambda: status().get("groups", {}).get("unit", {}).get("alarm"))
            unit = status()["groups"]["unit"]
            assert unit["state"] == "scoring" and unit["score"] > 1.0 and unit["last_scored_ns"] >= T0
            # counted once the local publish was answered too, which may come after the subscriber got it
            await until("the event counted", lambda: status()["events"]["events_sent"] == 1)

            # a deployment adds a group and changes only scoring-time settings of the other: kept, not relearned
            new = detector_config(tmp_path, groups=[group(raise_after=2).model_dump(),
                                                    group(name="pair", tags=TAGS[:2]).model_dump()])
            ctx.updates.put_nowait(new)
            await until("the new group", lambda: "pair" in status().get("groups", {}))
            assert status()["groups"]["unit"]["state"] == "scoring"
            assert status()["groups"]["pair"]["state"] == "learning"
            assert component.engine is not None and component.engine.det.models["unit"].group.raise_after == 2
        finally:
            ctx.stop.set()
            await asyncio.wait_for(task, 30)
            hmi.close()
            await server.stop()
        manifest, _ = persist.load(tmp_path / "model")
        saved = manifest["context"]["positions"][IN]
        assert saved == 500 and PositionStore(tmp_path / "data" / "positions").get(COMPONENT, IN) == saved

    try:
        asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_a_tag_that_never_arrives_is_reported_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, store = make_engine(tmp_path, groups=[group(tags=[*TAGS, "typo_tag"]).model_dump()])
    with caplog.at_level(logging.ERROR):
        write_rows(store, synthetic(60, seed=3), 0)
        drain(engine)
        write_rows(store, synthetic(60, seed=4), 60)
        drain(engine)
    unit = engine.status()["groups"]["unit"]
    assert unit["missing_tags"] == ["typo_tag"]
    assert unit["invalid"]["missing:typo_tag"] >= 100
    assert unit["state"] == "learning" and unit["learning_progress"] == "0/400" and unit["score"] is None
    assert len([r for r in caplog.records if "never arrived" in r.getMessage()]) == 1


def test_constant_tags_learn_and_nan_values_are_counted_not_scored(tmp_path: Path) -> None:
    data = stepped_data()
    data[:, TAGS.index("power")] = 1000.0  # zero variance
    data[430:435, TAGS.index("pressure")] = np.nan  # becomes BAD quality, no value
    engine, store = make_engine(tmp_path)
    write_rows(store, data, 0)
    drain(engine)
    unit = engine.status()["groups"]["unit"]
    assert unit["state"] == "scoring"
    assert unit["invalid"] == {"bad:pressure": 5}
    scores = [v for _t, _ts, v in _outputs(store, (Kind.SCORE,))]
    assert scores and all(np.isfinite(scores))
    assert unit["alarm"]  # the stepped valve is still found


@pytest.mark.parametrize("damage", ["version", "corrupt"])
def test_a_model_from_another_version_or_corrupt_is_set_aside_and_every_group_relearns(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine, store = make_engine(tmp_path)
    write_rows(store, stepped_data()[:420], 0)
    drain(engine)
    engine.close()
    path = persist.model_path(tmp_path / "model")
    if damage == "version":
        with zipfile.ZipFile(path) as zf:
            entries = {n: zf.read(n) for n in zf.namelist()}
        entries["manifest.json"] = json.dumps({**json.loads(entries["manifest.json"]), "format_version": 99}).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for n, b in entries.items():
                zf.writestr(n, b)
    else:
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    with caplog.at_level(logging.ERROR):
        again, _ = make_engine(tmp_path)
    assert again.restore == "relearning"
    assert "ALL GROUPS RELEARN" in caplog.text
    assert len(list((tmp_path / "model").glob(f"model.zip.{damage}-*"))) == 1
    assert again.status()["groups"]["unit"]["state"] == "learning"
    write_rows(store, stepped_data()[420:], 420)
    drain(again)  # reads on from the committed position, learning: nothing scored, nothing silently "normal"
    assert again.status()["groups"]["unit"]["learning_progress"] == "79/400"  # ticks 420..498
    assert [(t, v) for t, _ts, v in _outputs(store, (Kind.METRIC,))][-1] == ("anomaly/unit/state", "learning")
    assert _outputs(store)[-1][1] < T0 + 420 * NS  # nothing scored after the model was lost


@pytest.fixture
def component_files(tmp_path: Path) -> Iterator[Path]:
    cfg = detector_config(tmp_path).model_dump(mode="json")
    (tmp_path / "anomaly.yaml").write_text(yaml.safe_dump(cfg))
    store, _ = open_store(detector_config(tmp_path).store)
    write_rows(store, stepped_data(), 0)
    store.close()
    yield tmp_path / "anomaly.yaml"


def test_entry_point_scores_saves_on_sigterm_and_gatewayctl_shows_it(
    tmp_path: Path, component_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status_file = tmp_path / "data" / "status" / f"{COMPONENT}.json"
    env = {"PYTHONPATH": str(ROOT)}
    env.update({k: "" for k in ("SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT") if k in os.environ})
    proc = start([sys.executable, "-m", "components.anomaly_detector.main", "--config", str(component_files)],
                 tmp_path / "component.log", env=env)
    try:
        def alarmed() -> bool:
            try:
                return bool(json.loads(status_file.read_text())["groups"]["unit"]["alarm"])
            except (OSError, ValueError, KeyError):
                return False

        wait_for(alarmed, 60, "the component to raise the alarm")
        written = json.loads(status_file.read_text())
        assert written["config_state"] == "RUNNING" and len(written["config_revision"]) == 12
        assert gatewayctl(["anomaly", "status", "--store", str(tmp_path / "data"), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["groups"]["unit"]["state"] == "scoring" and shown["problems"] == []
        assert gatewayctl(["anomaly", "status", "--store", str(tmp_path / "data")]) == 0
        table = capsys.readouterr().out
        assert "unit" in table and "RAISED" in table and "factoryedge-modbus waiting" in table
    finally:
        code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.output()
    manifest, _ = persist.load(tmp_path / "model")
    assert manifest["context"]["positions"][IN] == 500
    assert "alarm events are not published over IPC" in proc.output()
    assert gatewayctl(["anomaly", "status", "--store", str(tmp_path / "nowhere")]) == 1


def test_without_groups_the_component_waits_for_a_deployment_that_adds_them(tmp_path: Path) -> None:
    status_file = tmp_path / "data" / "status" / f"{COMPONENT}.json"

    async def scenario() -> None:
        cfg = detector_config(tmp_path, groups=[])
        ctx = Context(COMPONENT, cfg, asyncio.Event())
        component = AnomalyComponent(cfg)
        task = asyncio.create_task(component.serve(ctx))
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while not status_file.exists():
                assert asyncio.get_running_loop().time() < deadline, "no status file"
                await asyncio.sleep(0.02)
            first = json.loads(status_file.read_text())
            assert first["problem"] == "no groups configured" and first["groups"] == {}
            ctx.updates.put_nowait(detector_config(tmp_path))
            while json.loads(status_file.read_text()).get("groups", {}).get("unit", {}).get("state") != "learning":
                assert asyncio.get_running_loop().time() < deadline, "the deployed group did not start"
                await asyncio.sleep(0.02)
            assert json.loads(status_file.read_text())["problem"] is None
        finally:
            ctx.stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    assert persist.model_path(tmp_path / "model").exists()  # saved on shutdown, learning progress included


def test_the_detector_publishes_its_counters_as_metric_records(tmp_path: Path) -> None:
    """Issue 13 item 14: its counters reach the fleet as METRIC records in its output stream, as the collectors'."""
    cfg = detector_config(tmp_path, metrics_interval_s=0.1)
    store, _ = open_store(cfg.store)
    write_rows(store, synthetic(50, seed=5), 0)

    def metrics() -> dict[str, float]:
        found: dict[str, float] = {}
        for msg in store.read(OUT, 0, max_count=100_000) if OUT in store.list_streams() else []:
            found.update({r.tag: float(r.value) for r in decode_batch(msg.payload)  # type: ignore[arg-type]
                          if r.kind == Kind.METRIC and r.tag.startswith("detector/")})
        return found

    async def scenario() -> dict[str, float]:
        ctx = Context(COMPONENT, cfg, asyncio.Event())
        task = asyncio.create_task(AnomalyComponent(cfg).serve(ctx))
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while metrics().get("detector/records_read", 0) < 50 * len(TAGS):
                assert asyncio.get_running_loop().time() < deadline, f"no metrics: {metrics()}"
                assert not task.done(), task
                await asyncio.sleep(0.05)
            return metrics()
        finally:
            ctx.stop.set()
            await asyncio.wait_for(task, 20)

    found = asyncio.run(scenario())
    assert {"detector/records_read", "detector/records_written", "detector/future_records_dropped",
            "detector/messages_lost", "detector/corrupt_messages_read"} <= set(found)
