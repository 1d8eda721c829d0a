"""Issue 12 item 1, second chain: ``gatewayctl doctor`` without ``--config`` must not follow a forged status file.

Without ``--config`` doctor finds each component's configuration through the pid in its status file (the
``--config`` on that process's command line). A status file is data anyone who can write the store may forge: it
named the pid of an attacker's process whose command line carried ``--config evil.yaml``, and doctor loaded that
OPC DA configuration and connected to a rogue gateway that answered in pickle (code execution as whoever ran
doctor, usually root). Each case here forges one link of that chain; doctor must not read the attacker's
configuration (the rogue never gets a connection) and must say why it did not. A control case shows that a
trustworthy component process is still followed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import Proc, wait_for
from gateway.cli.main import main
from tests.support.rogue_opcda import RogueGateway, client_tls

NOBODY = 65534
COMPONENT = "factoryedge.OpcDaCollector"
# Stands in for the attacker's process: it only sleeps, whatever its command line claims to be.
SLEEPER = "import time\ntime.sleep(120)\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulator.opcda_server import ensure_tls_files

    folder = tmp_path_factory.mktemp("forged-certs")
    ensure_tls_files(folder)
    return folder


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder everyone may read, as an unprivileged user's home would be to root (pytest's tmp is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="forged-status-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def rogue(certs: Path, world: Path) -> Iterator[Any]:
    gw: Any = RogueGateway(certs, "pickle", "connectok", world / "marker")
    gw.marker, gw.serializer = world / "marker", "pickle"
    yield gw
    gw.stop()


def _fake_entry_point(world: Path) -> Path:
    """A ``components.opcda_collector.main`` that only sleeps: its command line is the real entry point's."""
    pkg = world / "fake" / "components" / "opcda_collector"
    pkg.mkdir(parents=True)
    for init in (pkg.parent / "__init__.py", pkg / "__init__.py"):
        init.write_text("")
    (pkg / "main.py").write_text(SLEEPER)
    for p in [world / "fake", *world.joinpath("fake").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return world / "fake"


def _evil_config(world: Path, rogue: Any, certs: Path) -> Path:
    tls = {k: str(v) for k, v in client_tls(certs).items()}
    cfg = world / "evil.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"kind": "embedded", "path": str(world / "data")}, "connections": [
        {"name": "da", "host": "127.0.0.1", "port": rogue.port, "server": "FactoryEdge.TEP.1",
         "items": ["Reactor.Pressure"], "tls": tls}]}))
    cfg.chmod(0o644)
    return cfg


def _forge_status(store: Path, pid: int) -> None:
    (store / "status").mkdir(parents=True, exist_ok=True)
    (store / "status" / f"{COMPONENT}.json").write_text(json.dumps(
        {"component": COMPONENT, "pid": pid, "updated_ns": time.time_ns(), "started_ns": time.time_ns(),
         "connections": {}}))


def _start(argv: list[str], world: Path, *, user: int | None = None, env: dict[str, str] | None = None) -> Proc:
    """Start a process in ``world`` (its cwd: ``-m`` must find the fake package, not this checkout's)."""
    log = world / "process.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=world, start_new_session=True,
                                 env={"PATH": "/usr/bin:/bin", **(env or {})}, user=user, group=user)
    proc = Proc(popen, log)
    wait_for(lambda: "--config" in Path(f"/proc/{popen.pid}/cmdline").read_bytes().decode(errors="replace")
             or popen.poll() is not None, 20, "the process to start")
    assert popen.poll() is None, proc.output()
    return proc


def _doctor(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    main(["--json", "--store", str(store), "doctor", "--timeout", "3"])
    return dict(json.loads(capsys.readouterr().out))


CASES = ["not-an-entry-point", "entry-point-of-another-user", "config-writable-by-others",
         "config-owned-by-another-user"]


@pytest.mark.parametrize("case", CASES)
def test_doctor_does_not_follow_a_forged_status_file(case: str, rogue: Any, certs: Path, world: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0 and case in ("entry-point-of-another-user", "config-owned-by-another-user"):
        pytest.skip("needs root to act as another user")
    cfg = _evil_config(world, rogue, certs)
    fake = _fake_entry_point(world)
    python = shutil.which("python3", path="/usr/bin") or sys.executable  # one another user may run
    entry = [python, "-m", "components.opcda_collector.main", "--config", str(cfg)]
    env = {"PYTHONPATH": str(fake)}
    if case == "not-an-entry-point":
        proc = _start([python, "-c", SLEEPER, "--config", str(cfg)], world)
    elif case == "entry-point-of-another-user":
        proc = _start(entry, world, user=NOBODY, env=env)
    elif case == "config-writable-by-others":
        cfg.chmod(0o666)
        proc = _start(entry, world, env=env)
    else:
        os.chown(cfg, NOBODY, NOBODY)
        proc = _start(entry, world, env=env)
    store = world / "store"
    _forge_status(store, proc.popen.pid)
    try:
        report = _doctor(store, capsys)
    finally:
        proc.stop()
    assert not rogue.marker.exists(), "doctor followed the forged status file into the rogue's pickle payload"
    assert rogue.evil_sent == 0, "doctor read the configuration the forged status file pointed at"
    said = [c for c in report["checks"] if c["section"] == "configuration" and c["check"] == COMPONENT]
    assert said and said[0]["ok"] is False and "not followed" in said[0]["detail"], report["checks"]
    assert "pass --config" in said[0]["detail"]


def test_doctor_still_follows_a_trustworthy_component(rogue: Any, certs: Path, world: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Control: our own component process with a private configuration is followed (and then the rogue's pickle
    is refused by the serpent-only rule, not by luck)."""
    cfg = _evil_config(world, rogue, certs)
    proc = _start([sys.executable, "-m", "components.opcda_collector.main", "--config", str(cfg)], world,
                  env={"PYTHONPATH": str(_fake_entry_point(world))})
    store = world / "store"
    _forge_status(store, proc.popen.pid)
    try:
        report = _doctor(store, capsys)
    finally:
        proc.stop()
    said = [c for c in report["checks"] if c["section"] == "configuration" and c["check"] == COMPONENT]
    assert said and said[0]["ok"] is True and str(cfg) in said[0]["detail"], report["checks"]
    assert rogue.evil_sent >= 1 and not rogue.marker.exists()
