"""The built components, run as deployed: tools/gg_build.py, then ``gatewayctl dev run`` against the simulator.

Each component installs into its own venv from its zip (install.sh, as on a device), takes its configuration over
IPC, writes through our stream manager, and the publisher delivers to a file and, through PublishToIoTCore, to
mosquitto (the dev run's IoT Core stand-in). Then configuration changes go through deployment validation: a good one
is applied (the revision in the status file changes to the one expected), bad ones are rejected naming the field
and the running revision stays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from devkit.peers import ROOT, Mosquitto, Proc, start, wait_for
from gateway.componentconfig import PublisherConfig
from gateway.revision import revision_of
from tests.support.simulator import start_simulator

COLLECTOR, PUBLISHER, ANOMALY = "factoryedge.OpcUaCollector", "factoryedge.Publisher", "factoryedge.AnomalyDetector"
TAGS = ["Reactor/Pressure", "Reactor/Temperature"]
HAS_ANOMALY = (ROOT / "components" / "anomaly_detector" / "main.py").is_file()
START_S = 300  # first run: three venvs installed from PyPI (pip's cache makes later runs fast)


@dataclass
class DevRun:
    proc: Proc
    root: Path
    out: Path
    published: list[dict[str, Any]]
    lock: threading.Lock

    def status(self, component: str) -> dict[str, Any]:
        path = self.root / "work" / component / "data" / "status" / f"{component}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def gatewayctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli.main", "dev", *args, "--root", str(self.root)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def _overrides(opcua_port: int, out: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        COLLECTOR: {"status_interval_s": 0.5, "connections": [{
            "name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}", "namespace_uri": "urn:factoryedge:tep",
            "nodes": [f"s={t}" for t in TAGS], "publishing_interval_ms": 100, "flush_interval_s": 0.1}]},
        PUBLISHER: {"status_interval_s": 0.5, "metrics_interval_s": 3600, "destinations": [
            {"type": "file", "name": "file", "path": str(out), "fsync": False},
            {"type": "iotcore", "name": "cloud", "route": {"streams": ["factoryedge-opcua"]}},
        ]},
    }
    # as on a core set up by docs/deploying.md: the recipes scope IoT Core topics with {iot:thingName}, which the
    # nucleus resolves in accessControl only with interpolateComponentConfiguration (default false)
    config["aws.greengrass.Nucleus"] = {"MERGE": {"interpolateComponentConfiguration": True}}
    if HAS_ANOMALY:
        config[ANOMALY] = {"status_interval_s": 0.5, "input_streams": ["factoryedge-opcua"], "groups": [{
            "name": "reactor", "tags": TAGS, "cadence_s": 0.1, "training_points": 80}]}
    return config


@pytest.fixture(scope="module")
def devrun(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[DevRun]:
    folder = tmp_path_factory.mktemp("devrun")
    build = folder / "greengrass-build"
    built = subprocess.run([sys.executable, "tools/gg_build.py", "--output-dir", str(build)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    sim, opcua_port = start_simulator(folder)
    out = folder / "records.jsonl"
    overrides = folder / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(_overrides(opcua_port, out)))

    published: list[dict[str, Any]] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devrun-test-sub")
    sub.on_connect = lambda c, *_: c.subscribe("factoryedge/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with lock:
            published.append({"topic": msg.topic, "payload": json.loads(msg.payload)})

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    assert subscribed.wait(10)

    components = [c for c in (COLLECTOR, PUBLISHER, ANOMALY) if c != ANOMALY or HAS_ANOMALY]
    root = folder / "root"
    # FACTORYEDGE_PYTHON: the venvs are made from this interpreter; PIP_NO_COMPILE: no .pyc pass over numpy & co.
    env = {"FACTORYEDGE_PYTHON": sys.executable, "PIP_NO_COMPILE": "1", "PYTHONPATH": str(ROOT)}
    proc = start([sys.executable, "-m", "gateway.cli.main", "dev", "run", "--build", str(build), "--root", str(root),
                  "--config", str(overrides), "--mqtt", f"127.0.0.1:{mosquitto.port}", "--thing-name", "line1-gw",
                  "--stream-manager-port", "0", *(a for c in components for a in ("--component", c))],
                 folder / "devrun.log", env=env)
    run = DevRun(proc, root, out, published, lock)
    try:
        yield run
    finally:
        proc.stop(signal.SIGTERM, timeout=60)
        sub.loop_stop()
        sim.stop()


def _explain(run: DevRun) -> str:
    logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (run.root / "logs").glob("*"))
    return f"{run.proc.output()[-3000:]}\n{logs}"


def test_data_arrives_through_the_deployed_components(devrun: DevRun) -> None:
    def arrived() -> bool:
        assert devrun.proc.popen.poll() is None, _explain(devrun)
        with devrun.lock:
            cloud = [m for m in devrun.published if "/telemetry/" in m["topic"]]
        return bool(cloud) and {r["tag"] for r in devrun.records()} >= set(TAGS)

    try:
        wait_for(arrived, START_S, "records at the file destination and at the IoT Core stand-in", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(_explain(devrun)) from exc
    with devrun.lock:
        message = next(m for m in devrun.published if "/telemetry/" in m["topic"])
    # {thing} in the publisher's topic template is the dev run's thing name (AWS_IOT_THING_NAME).
    assert message["topic"].startswith("factoryedge/line1-gw/telemetry/")
    assert {r["tag"] for r in message["payload"]["records"]} <= set(TAGS)
    # Records only prove the collector and the publisher run: the anomaly detector installs its own venv (numpy &
    # co.) in parallel and may still be INSTALLING, or not yet have reported RUNNING over IPC.
    shown: list[str] = []

    def all_running() -> bool:
        status = devrun.gatewayctl("status", "--json")
        shown[:] = [status.stdout]
        components = json.loads(status.stdout)["components"]
        assert "BROKEN" not in {c["state"] for c in components.values()}, f"{status.stdout}\n{_explain(devrun)}"
        return all(c["state"] == c["reported_state"] == "RUNNING" for c in components.values())

    try:
        wait_for(all_running, START_S, "every component RUNNING, as the dev run and over IPC", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{shown[0]}\n{_explain(devrun)}") from exc
    assert devrun.status(PUBLISHER)["config_state"] == "RUNNING"


@pytest.mark.skipif(not HAS_ANOMALY, reason="components/anomaly_detector is not in the tree yet")
def test_anomaly_scores_arrive(devrun: DevRun) -> None:
    def scored() -> bool:
        assert devrun.proc.popen.poll() is None, _explain(devrun)
        return any(r["kind"] == "score" for r in devrun.records())

    try:
        wait_for(scored, START_S, "anomaly scores at the file destination", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(_explain(devrun)) from exc
    assert any(r["tag"].startswith("anomaly/reactor/") for r in devrun.records() if r["kind"] == "score")


def test_configuration_changes_are_validated_then_applied(devrun: DevRun) -> None:
    wait_for(lambda: bool(devrun.status(PUBLISHER).get("config_revision")), START_S, "the publisher's first revision",
             interval=0.5)
    before = devrun.status(PUBLISHER)["config_revision"]

    bad_key = devrun.root.parent / "bad-key.yaml"
    bad_key.write_text(yaml.safe_dump({"metrics_interval_s": 30, "colour": "red"}))
    rejected = devrun.gatewayctl("config", PUBLISHER, str(bad_key))
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "REJECTED" in rejected.stdout and "colour: Extra inputs are not permitted" in rejected.stdout

    wrong_type = devrun.root.parent / "wrong-type.yaml"
    wrong_type.write_text(yaml.safe_dump({"metrics_interval_s": "often"}))
    rejected = devrun.gatewayctl("config", PUBLISHER, str(wrong_type))
    assert rejected.returncode == 1 and "metrics_interval_s" in rejected.stdout, rejected.stdout

    unreachable = devrun.root.parent / "unreachable.yaml"
    unreachable.write_text(yaml.safe_dump({"connections": [{
        "name": "far", "endpoint": "opc.tcp://127.0.0.1:9", "namespace_uri": "urn:factoryedge:tep",
        "nodes": ["s=Reactor/Pressure"]}]}))
    rejected = devrun.gatewayctl("config", COLLECTOR, str(unreachable))
    assert rejected.returncode == 1, rejected.stdout
    assert "connections.0.endpoint: 127.0.0.1:9 is unreachable" in rejected.stdout
    assert devrun.status(PUBLISHER)["config_revision"] == before
    if HAS_ANOMALY:  # a member no collector writes: checked against the records in the input streams
        typo = devrun.root.parent / "typo.yaml"
        typo.write_text(yaml.safe_dump({"groups": [{"name": "reactor", "tags": [TAGS[0], "Reactor/Presure"],
                                                    "cadence_s": 0.1, "training_points": 80}]}))
        rejected = devrun.gatewayctl("config", ANOMALY, str(typo))
        assert rejected.returncode == 1, rejected.stdout
        assert "groups.0.tags.1: 'Reactor/Presure' is in no recent record of factoryedge-opcua" in rejected.stdout

    good = devrun.root.parent / "good.yaml"
    good.write_text(yaml.safe_dump({"metrics_interval_s": 1800}))
    applied = devrun.gatewayctl("config", PUBLISHER, str(good), "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    deployed = json.loads(applied.stdout)["configuration"]
    expected = revision_of(PublisherConfig.model_validate({k: v for k, v in deployed.items() if k != "accessControl"}))
    assert expected != before
    wait_for(lambda: devrun.status(PUBLISHER).get("config_revision") == expected, 60,
             f"the publisher to report revision {expected}", interval=0.2)
    count = len(devrun.records())
    wait_for(lambda: len(devrun.records()) > count, 60, "records after the change", interval=0.5)


def test_stop_ends_every_component_process(devrun: DevRun) -> None:
    status = json.loads(devrun.gatewayctl("status", "--json").stdout)
    pids = [c["pid"] for c in status["components"].values() if c["pid"]]
    assert pids
    stopped = devrun.gatewayctl("stop")
    assert stopped.returncode == 0
    devrun.proc.popen.wait(60)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert all(gone(pid) for pid in pids)
    assert not (devrun.root / "devrun.json").exists()


def _one_recipe(build: Path, script: str, setenv: dict[str, str] | None = None) -> Path:
    """A minimal built component (recipe + zip) whose Run script is ``script``."""
    import zipfile

    name, version = "factoryedge.Probe", "1.0.0"
    (build / "artifacts" / name / version).mkdir(parents=True)
    with zipfile.ZipFile(build / "artifacts" / name / version / f"{name}.zip", "w") as archive:
        archive.writestr("run.sh", "echo hi\n")
    recipe = {
        "RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": version,
        "ComponentConfiguration": {"DefaultConfiguration": {"port": 502, "site": {"name": "plant-1"}}},
        "Manifests": [{"Platform": {"os": "linux"},
                       "Artifacts": [{"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{name}.zip",
                                      "Unarchive": "ZIP"}],
                       "Lifecycle": {"Run": {"Script": script, "Setenv": setenv or {}}}}],
    }
    (build / "recipes").mkdir(parents=True)
    path = build / "recipes" / f"{name}-{version}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_variables_are_interpolated_as_the_nucleus_does(tmp_path: Path) -> None:
    from devkit import devrun_recipe as rcp
    from devkit.devrun import DevRun, Options

    _one_recipe(tmp_path / "build", 'sh "{artifacts:decompressedPath}/factoryedge.Probe/run.sh" {configuration:/port}',
                {"SITE": "{configuration:/site/name}", "THING": "{iot:thingName}", "WORK": "{work:path}",
                 "SHELL_VAR": "${HOME}"})
    run = DevRun(Options(build=tmp_path / "build", root=tmp_path / "root", thing_name="gw-7",
                         config=None))
    run.prepare()
    running = run.components["factoryedge.Probe"]
    step = run._interpolated(running, "Run")
    assert step is not None
    unpacked = tmp_path / "root" / "packages" / "artifacts-unarchived" / "factoryedge.Probe" / "1.0.0"
    assert step.script == f'sh "{unpacked}/factoryedge.Probe/run.sh" 502'
    assert (unpacked / "factoryedge.Probe" / "run.sh").read_text() == "echo hi\n"
    assert step.setenv == {"SITE": "plant-1", "THING": "gw-7", "SHELL_VAR": "${HOME}",
                           "WORK": str(tmp_path / "root" / "work" / "factoryedge.Probe")}
    merged = rcp.configuration_update({"a": 1, "b": {"c": 2}}, {"a": 5, "b": {"c": 3}},
                                      {"MERGE": {"b": {"d": 4}}, "RESET": ["/a"]})
    assert merged == {"a": 1, "b": {"c": 3, "d": 4}}


@pytest.mark.parametrize(("script", "message"), [
    ("echo {foo:bar}", "Manifests[0].Lifecycle.Run.Script: unknown recipe variable {foo:bar}"),
    ("echo {configuration:/nope}", "Manifests[0].Lifecycle.Run.Script: {configuration:/nope}: no configuration value"),
    ("echo {factoryedge.Other:configuration:/x}", "names factoryedge.Other, which this dev run does not run"),
])
def test_an_unknown_recipe_variable_stops_the_run_naming_recipe_and_key(
    tmp_path: Path, script: str, message: str
) -> None:
    from devkit.devrun import DevRun, Options
    from gateway.errors import ConfigError

    recipe = _one_recipe(tmp_path / "build", script)
    with pytest.raises(ConfigError) as info:
        DevRun(Options(build=tmp_path / "build", root=tmp_path / "root")).prepare()
    assert str(recipe) in str(info.value) and message in str(info.value)
