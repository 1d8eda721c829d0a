"""Issue 12 item 4: every secret-bearing field through every error path, and the secret is nowhere.

Each case puts one secret into a configuration (in its field, in a URL, under a misspelt key, on a line with a
syntax error) and runs it through what an engineer would run: `gatewayctl config check` (text and JSON), the
component itself, and for configurations that are valid but cannot connect, the running component's log and
status file, `gatewayctl status` and `gatewayctl doctor`. The secret must appear in none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import ROOT, free_port, start, wait_for

SECRET = "Zq7-S3CRET-do-not-print"
OPCUA, PUBLISHER, OPCDA = "factoryedge.OpcUaCollector", "factoryedge.Publisher", "factoryedge.OpcDaCollector"
ENTRY = {OPCUA: "opcua_collector", PUBLISHER: "publisher", OPCDA: "opcda_collector"}


def _opcua(**conn: Any) -> dict[str, Any]:
    base = {"name": "plc", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "nodes": ["ns=2;s=T"]}
    return {"connections": [{**base, **conn}]}


def _mqtt(**dest: Any) -> dict[str, Any]:
    return {"destinations": [{"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": free_port(), **dest}]}


SIGNED = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}

# (case id, component, configuration text or data, file suffix, what the refusal must name)
INVALID: list[tuple[str, str, Any, str, str]] = [
    ("yaml-syntax-on-password-line", OPCUA,
     "connections:\n  - name: plc\n    endpoint: opc.tcp://127.0.0.1:4840\n    nodes: ['ns=2;s=T']\n"
     f"    security:\n      username: op\n      password: \"{SECRET}\n      mode: [\n", ".yaml", "line 7"),
    ("json-syntax-on-password-line", PUBLISHER,
     '{"destinations": [{"type": "mqtt", "name": "b", "host": "h", "password": "' + SECRET + '"', ".json",
     "line 1"),
    ("url-userinfo", OPCUA, _opcua(endpoint=f"opc.tcp://op:{SECRET}@127.0.0.1:4840"), ".yaml",
     "connections.0.endpoint"),
    ("password-wrong-type", OPCUA, _opcua(security={**SIGNED, "username": "op", "password": [SECRET]}), ".yaml",
     "security.password"),
    ("password-on-plain-channel", OPCUA, _opcua(security={"username": "op", "password": SECRET}), ".yaml",
     "allow_insecure_identity"),
    ("mqtt-password-without-tls", PUBLISHER, _mqtt(username="u", password=SECRET), ".yaml", "allow_plaintext"),
    ("kinesis-endpoint-userinfo", PUBLISHER,
     {"destinations": [{"type": "kinesis", "name": "k", "stream_name": "s",
                        "aws": {"region": "eu-west-1", "endpoint_url": f"https://AKIDEXAMPLE:{SECRET}@127.0.0.1:1"}}]},
     ".yaml", "endpoint_url"),
    *[(f"misspelt-{key}", OPCUA, _opcua(security={**SIGNED, "username": "op", key: SECRET}), ".yaml",
       f"security.{key}") for key in ("passwort", "pasword", "pw", "pwd", "api_key", "token", "Password1",
                                      "secret_key")],
    *[(f"misspelt-top-{key}", PUBLISHER, {key: SECRET}, ".yaml", key) for key in ("passwd", "auth", "credentials")],
    ("opcda-hmac-with-other-error", OPCDA,
     {"connections": [{"name": "da", "host": "127.0.0.1", "items": ["a"], "hmac_key": SECRET,
                       "tls": None, "allow_plaintext": True}]}, ".yaml", "connections.0.server"),
]


def _write(folder: Path, name: str, content: Any, suffix: str) -> Path:
    path = folder / f"{name}{suffix}"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _everything(folder: Path) -> str:
    """Every file below ``folder`` as text: logs, status files, store, positions."""
    return "\n".join(p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if (p.is_file()
                     and not p.name.endswith((".yaml", ".json"))) or (p.is_file() and "status" in p.parts))


@pytest.mark.parametrize(("case", "component", "content", "suffix", "names"), INVALID, ids=[c[0] for c in INVALID])
def test_a_refused_configuration_never_shows_its_secret(tmp_path: Path, case: str, component: str, content: Any,
                                                       suffix: str, names: str) -> None:
    path = _write(tmp_path, case, content, suffix)
    outputs = []
    for extra in ([], ["--json"]):
        check = _run([sys.executable, "-m", "gateway.cli.main", "config", "check", "--component", component,
                      *extra, str(path)], tmp_path)
        assert check.returncode == 2, f"{case}: config check accepted it\n{check.stdout}{check.stderr}"
        outputs.append(check.stdout + check.stderr)
    comp = _run([sys.executable, str(ROOT / "components" / ENTRY[component] / "main.py"), "--config", str(path)],
                tmp_path)
    assert comp.returncode == 2, f"{case}: the component started\n{comp.stdout}{comp.stderr}"
    outputs.append(comp.stdout + comp.stderr)
    for out in outputs:
        assert SECRET not in out, f"{case}: the secret is printed:\n{out}"
        assert names in out, f"{case}: refused, but not for naming {names}:\n{out}"
        assert "fix" in out.lower(), f"{case}: no fix given:\n{out}"


RUNNING: list[tuple[str, str, dict[str, Any]]] = [
    ("opcua-insecure-identity-allowed", OPCUA,
     _opcua(security={"username": "op", "password": SECRET, "allow_insecure_identity": True})),
    ("mqtt-plaintext-allowed", PUBLISHER,  # its own metrics give it something to send, so it connects
     {**_mqtt(username="u", password=SECRET, allow_plaintext=True, route={"streams": ["factoryedge-metrics"]}),
      "metrics_interval_s": 0.2}),
]


@pytest.mark.parametrize(("case", "component", "cfg"), RUNNING, ids=[c[0] for c in RUNNING])
def test_a_running_component_that_cannot_connect_never_shows_its_secret(tmp_path: Path, case: str,
                                                                       component: str, cfg: dict[str, Any]) -> None:
    store = tmp_path / "data"
    cfg = {**cfg, "store": {"kind": "embedded", "path": str(store)}, "status_interval_s": 0.2}
    path = _write(tmp_path, case, cfg, ".yaml")
    proc = start([sys.executable, str(ROOT / "components" / ENTRY[component] / "main.py"), "--config", str(path),
                  "--log-level", "DEBUG"], tmp_path / "component.log", env={"PYTHONPATH": str(ROOT)})
    status = store / "status" / f"{component}.json"

    def failed_once() -> bool:
        try:
            text = status.read_text()
        except OSError:
            return proc.popen.poll() is not None
        return "error" in text.lower() and any(
            isinstance(v, str) and v for k, v in _flat(json.loads(text)) if "error" in k)

    try:
        wait_for(failed_once, 60, f"{case}: a connection error in the status file")
        assert proc.popen.poll() is None, proc.output()
        outputs = [_run([sys.executable, "-m", "gateway.cli.main", "--store", str(store), *cmd], tmp_path)
                   for cmd in (["status"], ["status", "--json"], ["--config", str(path), "doctor"],
                               ["--config", str(path), "doctor", "--json"], ["--config", str(path), "config",
                                                                            "check"])]
    finally:
        proc.stop()
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr, f"{case}: printed by {out.args}:\n{out.stdout}{out.stderr}"
    assert SECRET not in proc.output(), f"{case}: the component logged it"
    assert SECRET not in _everything(store), f"{case}: written under the store"


def _flat(value: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flat(v, f"{key}.{k}")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in _flat(v, f"{key}.{i}")]
    return [(key, value)]
