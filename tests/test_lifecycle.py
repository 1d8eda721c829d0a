"""The stand-ins follow the nucleus's lifecycle (com.aws.greengrass.lifecyclemanager.Lifecycle and
GenericExternalService), and our components report states that mean what the nucleus makes of them.

- the state machine: RUNNING from RUNNING ignored, ERRORED -> restart, BROKEN after 3 errors within the error
  reset time, Run vs Startup, the Startup timeout (unit level);
- the IPC stand-in applies it to UpdateState;
- ``gatewayctl dev run`` restarts a component that reports ERRORED and stops it for good (BROKEN) at the third;
- a stream manager slower than the collector's connect timeout leaves the collector RUNNING (retrying in-process,
  the cause in its status file), where it used to report ERRORED, which on a core breaks it for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from devkit.devrun_lifecycle import ComponentLifecycle
from devkit.ipc_server import IpcServer
from devkit.peers import ROOT, free_port
from gateway.ipc import GreengrassIpc

T = TypeVar("T")
PROBE = "factoryedge.Probe"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T], limit_s: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit_s)

    return asyncio.run(bounded())


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


# ---- the state machine ---------------------------------------------------------------------------------------


def _started(kind: Any = "Startup", clock: Clock | None = None) -> ComponentLifecycle:
    lc = ComponentLifecycle("c", kind=kind, clock=clock or Clock())
    lc.installed()
    lc.starting()
    return lc


def _restart(lc: ComponentLifecycle) -> None:
    lc.stopping()
    lc.stopped(restart=True)
    lc.starting()


def test_startup_running_is_reported_once_and_errored_restarts_until_broken_at_the_third() -> None:
    lc = _started()
    assert lc.state == "STARTING"
    assert lc.report("RUNNING") and lc.state == "RUNNING"
    assert not lc.report("RUNNING")  # RUNNING -> RUNNING: not an allowed report
    for attempt in (1, 2):
        assert lc.report("ERRORED") and lc.state == "ERRORED"
        assert not lc.report("ERRORED")  # nothing is allowed after ERRORED until the nucleus restarted it
        _restart(lc)
        assert lc.state == "STARTING" and lc.restarts == attempt
        lc.report("RUNNING")
    lc.report("ERRORED")
    assert lc.state == "BROKEN"
    lc.stopping()
    lc.stopped(restart=True)
    assert lc.state == "BROKEN"  # until a deployment
    lc.redeployed()
    assert lc.state == "NEW"


def test_errors_further_apart_than_the_reset_time_do_not_break() -> None:
    clock = Clock()
    lc = _started(clock=clock)
    for _ in range(5):
        lc.report("RUNNING")
        lc.report("ERRORED")
        assert lc.state == "ERRORED"
        clock.now += 3600  # DEFAULT_ERROR_RESET_TIME_IN_SEC
        _restart(lc)
    lc.report("RUNNING")
    lc.report("ERRORED")
    clock.now += 3599
    _restart(lc)
    lc.report("RUNNING")
    lc.report("ERRORED")
    clock.now += 3599
    _restart(lc)
    lc.report("RUNNING")
    lc.report("ERRORED")
    assert lc.state == "BROKEN"  # a chain of three, each within an hour of the previous one


def test_run_lifecycle_the_nucleus_reports_running_and_exits_decide() -> None:
    lc = _started("Run")
    assert lc.state == "RUNNING"
    assert not lc.report("RUNNING")  # the component's own RUNNING means nothing under Run
    lc.exited(1, lc.generation)
    assert lc.state == "ERRORED"
    _restart(lc)
    lc.exited(0, lc.generation)
    assert lc.state == "FINISHED"


def test_startup_exit_codes_and_timeout() -> None:
    lc = _started()
    lc.exited(0, lc.generation)
    assert lc.state == "RUNNING"  # a Startup script that exits 0 while STARTING: RUNNING
    lc.exited(0, lc.generation)
    assert lc.state == "RUNNING"  # exit 0 while RUNNING: nothing
    lc.exited(3, lc.generation - 1)
    assert lc.state == "RUNNING"  # an exit of an earlier start: nothing
    lc.exited(3, lc.generation)
    assert lc.state == "ERRORED"
    _restart(lc)
    lc.startup_timed_out(lc.generation)
    assert lc.state == "ERRORED" and "STARTUP_TIMEOUT" in lc.reason


# ---- the IPC stand-in --------------------------------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lc") as folder:
        yield Path(folder) / "ipc.sock"


def test_ipc_stand_in_applies_the_allowed_transitions(socket_path: Path) -> None:
    async def body() -> None:
        server = IpcServer(socket_path, {"tok": PROBE})
        await server.start()
        ipc = await GreengrassIpc.connect(socket_path=str(socket_path), auth_token="tok")
        try:
            await ipc.update_state("RUNNING")
            await ipc.update_state("RUNNING")  # answered, and ignored, as by the nucleus
            lifecycle = server.lifecycle(PROBE)
            assert lifecycle.state == "RUNNING"
            assert lifecycle.history == ["STARTING", "RUNNING"]
            await ipc.update_state("ERRORED")
            assert lifecycle.state == "ERRORED"
            assert server.state_history[PROBE] == ["RUNNING", "RUNNING", "ERRORED"]  # what was reported
        finally:
            ipc.close()
            await server.stop()

    run(body())


# ---- gatewayctl dev run --------------------------------------------------------------------------------------

PROBE_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from gateway.ipc import GreengrassIpc

async def main() -> None:
    starts = Path(sys.argv[1])
    starts.write_text(starts.read_text() + "x" if starts.exists() else "x")
    ipc = await GreengrassIpc.connect()
    await ipc.update_state("RUNNING")
    await asyncio.sleep(0.5)
    await ipc.update_state("ERRORED")   # and keeps running: the nucleus decides
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _probe_build(build: Path, lifecycle: dict[str, Any]) -> None:
    version = "1.0.0"
    (build / "artifacts" / PROBE / version).mkdir(parents=True)
    with zipfile.ZipFile(build / "artifacts" / PROBE / version / f"{PROBE}.zip", "w") as archive:
        archive.writestr("probe.py", PROBE_SCRIPT)
    recipe = {
        "RecipeFormatVersion": "2020-01-25", "ComponentName": PROBE, "ComponentVersion": version,
        "ComponentConfiguration": {"DefaultConfiguration": {}},
        "Manifests": [{"Platform": {"os": "linux"},
                       "Artifacts": [{"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{PROBE}.zip",
                                      "Unarchive": "ZIP"}],
                       "Lifecycle": lifecycle}],
    }
    (build / "recipes").mkdir(parents=True)
    (build / "recipes" / f"{PROBE}-{version}.yaml").write_text(yaml.safe_dump(recipe))


def test_dev_run_restarts_a_component_that_reports_errored_and_breaks_it_at_the_third(tmp_path: Path) -> None:
    from devkit.devrun import DevRun, Options

    starts = tmp_path / "starts"
    _probe_build(tmp_path / "build", {"Startup": {
        "Script": f'exec "{sys.executable}" "{{artifacts:decompressedPath}}/{PROBE}/probe.py" "{starts}"',
        "Setenv": {"PYTHONPATH": str(ROOT)}}})

    async def body() -> None:
        devrun = DevRun(Options(build=tmp_path / "build", root=tmp_path / "root", stream_manager_port=0))
        await devrun.start()
        try:
            probe = devrun.components[PROBE]
            await until(lambda: starts.exists() and len(starts.read_text()) >= 2, 30, "a restart after ERRORED")
            # BROKEN is set, then the process is stopped (handleCurrentStateBroken): wait for both
            await until(lambda: devrun.status()["components"][PROBE]["state"] == "BROKEN"
                        and devrun.status()["components"][PROBE]["pid"] is None, 30, "BROKEN and stopped")
            status = devrun.status()["components"][PROBE]
            assert status["restarts"] == 2 and status["pid"] is None
            await asyncio.sleep(1.0)  # would a 4th start come? (nothing to poll for: it must not happen)
            assert starts.read_text() == "xxx"
            assert probe.process is None
            # a deployment to it gives it a new start, as on a core
            answer = await devrun.control._handle({"op": "config", "component": PROBE, "merge": {"x": 1}})
            assert answer["applied"], answer
            await until(lambda: len(starts.read_text()) == 4, 30, "a new start after the deployment")
        finally:
            await devrun.stop()

    run(body(), 90)


# ---- a stream manager slower than the connect timeout -------------------------------------------------------


def test_a_slow_stream_manager_does_not_break_a_collector(socket_path: Path, tmp_path: Path) -> None:
    from devkit.stream_manager_service import StreamManagerService

    collector = "factoryedge.OpcUaCollector"
    port = free_port()
    store = tmp_path / "data"
    config = {"store": {"kind": "stream_manager", "path": str(store), "stream_manager_port": port,
                        "connect_timeout_s": 0.5},  # a core's 60 s, scaled down: the port opens much later
              "status_interval_s": 0.2}

    async def body() -> None:
        server = IpcServer(socket_path, {"tok-col": collector})
        server.set_configuration(collector, config)
        await server.start()
        env = {**os.environ, "SVCUID": "tok-col", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT":
               str(socket_path), "PYTHONPATH": str(ROOT)}
        log = (tmp_path / "collector.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "components/opcua_collector/main.py", cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        status_file = store / "status" / f"{collector}.json"

        def status() -> dict[str, Any]:
            try:
                return dict(json.loads(status_file.read_text()))
            except (OSError, ValueError):
                return {}

        sm: StreamManagerService | None = None
        try:
            await until(lambda: server.states.get(collector) is not None, 30, "the collector's first report")
            # several connect timeouts pass with no stream manager
            await until(lambda: "stream manager" in str(status().get("config_error", "")).lower(), 30,
                        "the cause in the status file")
            started = time.monotonic()
            while time.monotonic() - started < 3:
                assert proc.returncode is None
                assert "ERRORED" not in server.state_history.get(collector, []), (tmp_path / "collector.log"
                                                                                    ).read_text()[-2000:]
                await asyncio.sleep(0.1)
            assert server.lifecycle(collector).state == "RUNNING"
            sm = StreamManagerService(tmp_path / "sm", port=port)
            await sm.start()
            await until(lambda: status().get("config_state") == "RUNNING" and not status().get("config_error"),
                        60, "the collector running once the stream manager is up")
            assert "ERRORED" not in server.state_history[collector]
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, 15)
            await proc.wait()
            log.close()
            if sm is not None:
                await sm.stop()
            await server.stop()

    run(body(), 120)
