"""Issue 12 item 5 and the revision part of item 7: what the components write is private, and a secret change is a
new configuration revision that says nothing about the secret.

The publisher runs as its own process with the process umask of the test (022, as a shell or systemd gives it):
its store, positions, status file, revision key and output file must still come out 0600 in 0700 folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.peers import ROOT, start, wait_for
from gateway.componentconfig import OpcUaCollectorConfig
from gateway.revision import revision_of


@pytest.fixture
def shell_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _loose(root: Path) -> list[str]:
    """Every path below ``root`` that its group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def test_a_component_writes_only_private_files(tmp_path: Path, shell_umask: None) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    out = run / "out"  # created by the file destination
    cfg = {"store": {"kind": "embedded", "path": str(run / "data")}, "status_interval_s": 0.2,
           "metrics_interval_s": 0.2,
           "destinations": [{"type": "file", "name": "file", "path": str(out / "records.jsonl"),
                             "route": {"streams": ["factoryedge-metrics"]}}]}
    (run / "publisher.yaml").write_text(yaml.safe_dump(cfg))
    proc = start([sys.executable, "components/publisher/main.py", "--config", str(run / "publisher.yaml")],
                 tmp_path / "publisher.log", env={"PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: ((out / "records.jsonl").exists() and (out / "records.jsonl").stat().st_size > 0
                 and any((run / "data").rglob("*.pos*"))) or proc.popen.poll() is not None,
                 60, "the publisher's first metrics in the file and a committed position")
        assert proc.popen.poll() is None, proc.output()
    finally:
        proc.stop()
    written = [p for p in (run / "data").rglob("*") if p.is_file()]
    assert any(p.parent.name == "status" for p in written), written
    assert _loose(run / "data") == []
    assert _loose(out) == []


def _collector(password: str, tmp_path: Path) -> OpcUaCollectorConfig:
    return OpcUaCollectorConfig.model_validate({
        "store": {"path": str(tmp_path / "data")},
        "connections": [{"name": "plc", "endpoint": "opc.tcp://127.0.0.1:4840", "nodes": ["ns=2;s=T"],
                         "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                                      "username": "op", "password": password}}]})


def test_a_password_change_is_a_new_revision_that_reveals_nothing(tmp_path: Path, shell_umask: None) -> None:
    first, again = revision_of(_collector("hunter2-A", tmp_path)), revision_of(_collector("hunter2-A", tmp_path))
    changed = revision_of(_collector("hunter2-B", tmp_path))
    assert first == again
    assert first != changed
    assert first.split(".")[0] == changed.split(".")[0]  # the settings part stays comparable across a fleet
    key = tmp_path / "data" / "revision.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # keyed: the digest of the password alone (what anyone could compute for guesses) is not in it
    for guess in ("hunter2-A", json.dumps([[".connections.0.security.password", "hunter2-A"]])):
        assert hashlib.sha256(guess.encode()).hexdigest()[:6] not in first
    # another device (another key) gives another suffix for the same password
    assert revision_of(_collector("hunter2-A", tmp_path), key=b"another device").split(".")[1] != first.split(".")[1]


def test_the_generated_opcua_private_key_is_0600_whatever_the_umask(tmp_path: Path, shell_umask: None) -> None:
    import asyncio

    from gateway.sources.opcua_config import OpcUaSecurity
    from gateway.sources.opcua_security import client_certificate

    old_key = tmp_path / "pki" / "own" / "key.pem"
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt", pki_dir=str(tmp_path / "pki"))
    cert, key, _ = asyncio.run(client_certificate(sec))
    assert key == old_key and cert.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    key.chmod(0o644)  # as an earlier version left it: tightened at the next start, the key itself kept
    before = key.read_bytes()
    asyncio.run(client_certificate(sec))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_bytes() == before
