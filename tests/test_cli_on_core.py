"""gatewayctl next to a core whose files belong to another user: the factoryedge.Cli component installs the command
under ``gatewayctl dev run`` (its recipe's Install, as on a device), the components' stores are then owned by a
system user with their 0600/0700 modes, and:

- as a non-root user (``nobody``) ``gatewayctl status`` fails in one line naming the unreadable folder and the exact
  ``sudo gatewayctl`` command, exit 2;
- as root ``gatewayctl --greengrass-root ROOT status | doctor | tail | buffer`` work: status files from the work
  folders, configurations from the deployment and streams from stream manager with client authentication, both
  through the credentials borrowed from a running component (gateway/cli/core.py).

Needs root (useradd, setpriv, chown), as in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devkit.peers import ROOT, Proc, start, wait_for
from tests.support.simulator import start_simulator

COLLECTOR, PUBLISHER, CLI = "factoryedge.OpcUaCollector", "factoryedge.Publisher", "factoryedge.Cli"
USER = "factoryedge-test"
START_S = 420  # three venvs installed from PyPI on a first run
SYSTEM_PYTHON = "/usr/bin/python3"  # /root is 0700: the venvs must come from a Python every user can run

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path(SYSTEM_PYTHON).exists(),
                                reason="needs root, setpriv and /usr/bin/python3 (CI runs as root)")


@dataclass
class Core:
    proc: Proc
    root: Path
    gatewayctl: Path

    def run(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups"] if user else []
        return subprocess.run([*prefix, str(self.gatewayctl), *args], capture_output=True, text=True, timeout=120,
                              cwd="/", check=False, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def _ensure_user() -> None:
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)


@pytest.fixture(scope="module")
def core() -> Iterator[Core]:
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="feg-core-", dir="/tmp"))
    base.chmod(0o755)  # the technician (nobody) may walk to the root and the command, not into the stores
    build = base / "greengrass-build"
    built = subprocess.run([sys.executable, "tools/gg_build.py", "--output-dir", str(build)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    sim, opcua_port = start_simulator(base)
    out = base / "records.jsonl"
    gatewayctl = base / "bin" / "gatewayctl"
    overrides = base / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({
        COLLECTOR: {"status_interval_s": 0.5, "connections": [{
            "name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}", "namespace_uri": "urn:factoryedge:tep",
            "nodes": ["s=Reactor/Pressure"], "publishing_interval_ms": 100, "flush_interval_s": 0.1}]},
        PUBLISHER: {"status_interval_s": 0.5, "metrics_interval_s": 3600,
                    "destinations": [{"type": "file", "name": "file", "path": str(out), "fsync": False}]},
        CLI: {"installDir": str(base / "cli"), "commandPath": str(gatewayctl)},
    }))
    root = base / "root"
    env = {"FACTORYEDGE_PYTHON": SYSTEM_PYTHON, "PIP_NO_COMPILE": "1", "PYTHONPATH": str(ROOT)}
    proc = start([sys.executable, "-m", "gateway.cli.main", "dev", "run", "--build", str(build), "--root", str(root),
                  "--config", str(overrides), "--iot-file", str(base / "iot.jsonl"), "--stream-manager-port", "0",
                  *(a for c in (COLLECTOR, PUBLISHER, CLI) for a in ("--component", c))], base / "devrun.log", env=env)
    try:
        yield Core(proc, root, gatewayctl)
    finally:
        proc.stop(signal.SIGTERM, timeout=60)
        sim.stop()
        shutil.rmtree(base, ignore_errors=True)


def _explain(core: Core) -> str:
    logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (core.root / "logs").glob("*"))
    return f"{core.proc.output()[-3000:]}\n{logs}"


def _running(core: Core) -> None:
    """Wait for the command, records in the publisher's file, then hand the stores to the system user."""
    def ready() -> bool:
        assert core.proc.popen.poll() is None, _explain(core)
        status = core.root / "work" / PUBLISHER / "data" / "status" / f"{PUBLISHER}.json"
        return core.gatewayctl.is_file() and status.is_file() and bool(
            json.loads(status.read_text()).get("destinations", {}).get("file", {}).get("records_sent"))

    try:
        wait_for(ready, START_S, "the gatewayctl command and records sent by the publisher", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(_explain(core)) from exc
    for folder in (core.root, core.root / "work"):  # as /greengrass/v2 and its work folder: root's, 0755
        folder.chmod(0o755)
    for component in (COLLECTOR, PUBLISHER):  # as on a core: work folder and store belong to the component's user
        data = core.root / "work" / component / "data"
        subprocess.run(["chown", f"{USER}:{USER}", str(data.parent)], check=True)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(data)], check=True)
        assert data.stat().st_mode & 0o077 == 0  # 0700, as the component made it: nothing loosened


@pytest.fixture(scope="module")
def running(core: Core) -> Core:
    _running(core)
    return core


def test_a_user_without_access_gets_one_line_with_the_sudo_command(running: Core) -> None:
    result = running.run("--greengrass-root", str(running.root), "status", user="nobody")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot read" in lines[0] and f"user {USER}" in lines[0]
    assert f"sudo gatewayctl --greengrass-root {running.root} status" in lines[0]


def test_status_as_root_reads_the_work_folders_and_stream_manager(running: Core) -> None:
    result = running.run("--greengrass-root", str(running.root), "--json", "status")
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    assert {c["component"] for c in data["components"]} >= {COLLECTOR, PUBLISHER}
    assert all(c["alive"] for c in data["components"])
    assert "store_error" not in data, data.get("store_error")
    assert "factoryedge-opcua" in {s["stream"] for s in data["streams"]}


def test_doctor_as_root_checks_the_deployed_configuration(running: Core) -> None:
    result = running.run("--greengrass-root", str(running.root), "--json", "doctor")
    assert result.returncode in (0, 1), result.stderr
    checks = {(c["section"], c["check"]): c for c in json.loads(result.stdout)["checks"]}
    for component in (COLLECTOR, PUBLISHER):  # from the deployment (IPC), not "none found"
        assert checks[("configuration", component)]["ok"] is True, checks[("configuration", component)]
        assert "deployment" in checks[("configuration", component)]["detail"]
    store = checks[("store", "store")]
    assert store["ok"] is True and "stream manager 127.0.0.1:" in store["detail"], store


def test_tail_as_root_reads_records_through_stream_manager(running: Core) -> None:
    result = running.run("--greengrass-root", str(running.root), "tail", "factoryedge-opcua", "-n", "5")
    assert result.returncode == 0, result.stderr
    assert "Reactor/Pressure" in result.stdout


def test_buffer_as_root_shows_the_publishers_positions(running: Core) -> None:
    result = running.run("--greengrass-root", str(running.root), "--json", "buffer")
    assert result.returncode in (0, 1), result.stderr
    rows = json.loads(result.stdout)
    assert ("file", "factoryedge-opcua") in {(r["reader"], r["stream"]) for r in rows}
