"""``gatewayctl opcua`` probes and the OPC UA ``diagnose`` checks of ``gatewayctl doctor``, against node-opcua and
the simulator's OPC UA endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import free_port
from gateway.cli.main import main as gatewayctl
from gateway.diagnostics import Finding
from gateway.sources.opcua import diagnose
from gateway.sources.opcua_security import load_der, trust
from tests.support.opcua_peer import NodeOpcUa, conn
from tests.support.simulator import start_simulator


@pytest.fixture
def peer(node_opcua_shared: NodeOpcUa) -> NodeOpcUa:
    return node_opcua_shared


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = gatewayctl(list(argv))
    return rc, capsys.readouterr().out


def _by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check.split(": ", 1)[1]: f for f in findings}


def test_browse_read_subscribe_json(peer: NodeOpcUa, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "opcua", "browse", peer.url, "--json")
    assert rc == 0 and {"Reactor", "Tank", "Bulk"} <= {r["browse_name"] for r in json.loads(out)}
    rc, out = _run(capsys, "opcua", "browse", peer.url, f"ns={peer.ns};s=Reactor")
    assert rc == 0 and f"ns={peer.ns};s=Reactor/Pressure" in out and "Double" in out
    rc, out = _run(capsys, "opcua", "read", peer.url, f"ns={peer.ns};s=Reactor/Batch", "--json")
    [row] = json.loads(out)
    assert rc == 0 and row["type"] == "String" and row["value"].startswith("B") and row["good"]
    rc, out = _run(capsys, "opcua", "subscribe", peer.url, f"ns={peer.ns};s=Reactor/Count", "--count", "3",
                   "--interval-ms", "100", "--duration", "30", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and len(rows) == 3 and all(isinstance(r["value"], int) for r in rows)


def test_read_unknown_node_exits_1(peer: NodeOpcUa, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "opcua", "read", peer.url, f"ns={peer.ns};s=Reactor/Nope", f"ns={peer.ns};s=Tank/Level")
    assert rc == 1 and "BadNodeIdUnknown" in out and "Good" in out


def test_secure_read_with_generated_certificate(tmp_path: Path, peer: NodeOpcUa,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pki = tmp_path / "pki"
    args = ["opcua", "read", peer.url, f"ns={peer.ns};s=Tank/Level", "--policy", "Basic256Sha256", "--mode",
            "SignAndEncrypt", "--pki-dir", str(pki)]
    assert gatewayctl(args) == 1
    assert "not in the trust list" in capsys.readouterr().err
    trust(load_der(peer.cert), pki / "trusted")
    rc, out = _run(capsys, *args)
    assert rc == 0 and "Good" in out


def test_cli_against_the_simulator(simulator: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"opc.tcp://127.0.0.1:{simulator}"
    rc, out = _run(capsys, "opcua", "browse", url, "--json")
    assert rc == 0 and out.startswith("[")
    rc, out = _run(capsys, "opcua", "read", url, "nsu=urn:factoryedge:tep;s=Reactor/Pressure", "--json")
    rows = json.loads(out)
    assert rc == 0 and 2600 < rows[0]["value"] < 2800
    rc, out = _run(capsys, "opcua", "subscribe", url, "nsu=urn:factoryedge:tep;s=Reactor/Pressure", "--count", "2",
                   "--interval-ms", "100", "--duration", "30")
    assert rc == 0 and out.count("Reactor/Pressure") == 2


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = gatewayctl(["opcua", "read", "opc.tcp://127.0.0.1:4840", "ns=2;s=X", "--mode", "Sign"])
    assert rc == 2 and "security.mode" in capsys.readouterr().err


def test_diagnose_healthy_connection(tmp_path: Path, peer: NodeOpcUa) -> None:
    pki = tmp_path / "pki"
    trust(load_der(peer.cert), pki / "trusted")
    cfg = conn(peer, nodes=["s=Reactor/Pressure"], browse=["Objects/Tank/*"],
               security={"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "pki_dir": str(pki)})
    found = _by_check(asyncio.run(diagnose(cfg, 5)))
    assert all(f.ok for f in found.values()), found
    assert {"endpoint reachable", "security", "server certificate trusted", "session", "nodes"} == set(found)
    assert "browse found 2 more" in found["nodes"].detail


def test_diagnose_wrong_node_id_names_closest_matches(peer: NodeOpcUa) -> None:
    found = asyncio.run(diagnose(conn(peer, nodes=["s=Reactor/Presure", "s=Tank/Level"]), 5))
    bad = [f for f in found if f.ok is False]
    assert len(bad) == 1 and "s=Reactor/Presure" in bad[0].check
    assert f"ns={peer.ns};s=Reactor/Pressure" in bad[0].fix.split("closest matches: ")[1].split(", ")[0]
    assert any(f.ok is None and "1 of 2" in f.detail for f in found)


def test_diagnose_untrusted_certificate_and_offered_security(tmp_path: Path, peer: NodeOpcUa) -> None:
    sec: dict[str, Any] = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "pki_dir": str(tmp_path / "p")}
    found = _by_check(asyncio.run(diagnose(conn(peer, security=sec), 5)))
    cert = found["server certificate trusted"]
    assert cert.ok is False and f"gatewayctl opcua trust {peer.url} --accept" in cert.fix
    assert "session" not in found
    found = _by_check(asyncio.run(diagnose(conn(peer, security={**sec, "mode": "Sign"}), 5)))
    assert found["security"].ok is False and "Basic256Sha256/SignAndEncrypt" in found["security"].detail


def test_diagnose_unreachable() -> None:
    from gateway.sources.opcua_config import OpcUaConnection

    cfg = OpcUaConnection(name="x", endpoint=f"opc.tcp://127.0.0.1:{free_port()}", nodes=["ns=2;s=A"])
    [f] = asyncio.run(diagnose(cfg, 2))
    assert f.ok is False and "does not accept TCP connections" in f.detail


def test_doctor_reports_a_wrong_node_id(tmp_path: Path, peer: NodeOpcUa, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "opcua_collector.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "data")}, "connections": [
        {"name": "line1", "endpoint": peer.url, "namespace_uri": "urn:factoryedge:test",
         "nodes": ["s=Reactor/Temprature"]}]}))
    rc = gatewayctl(["--config", f"factoryedge.OpcUaCollector={cfg}", "doctor", "--json", "--timeout", "5"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    mine = [c for c in checks if "s=Reactor/Temprature" in c["check"]]
    assert rc == 1 and mine and mine[0]["ok"] is False
    assert f"ns={peer.ns};s=Reactor/Temperature" in mine[0]["fix"]


def test_trust_then_secure_read_on_the_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc, port = start_simulator(tmp_path, extra=["--opcua-security", "sign", "--opcua-cert-dir",
                                                  str(tmp_path / "server-pki")])
    url, pki = f"opc.tcp://127.0.0.1:{port}", tmp_path / "gw-pki"
    read = ["opcua", "read", url, "nsu=urn:factoryedge:tep;s=Reactor/Pressure", "--policy", "Basic256Sha256",
            "--mode", "Sign", "--pki-dir", str(pki), "--json"]
    try:
        assert gatewayctl(read) == 1 and "gatewayctl opcua trust" in capsys.readouterr().err
        sha256 = hashlib.sha256((tmp_path / "server-pki" / "server-cert.der").read_bytes()).hexdigest()
        rc, out = _run(capsys, "opcua", "trust", url, "--trust-dir", str(pki / "trusted"), "--accept",
                       "--thumbprint", sha256, "--json")
        assert rc == 0 and json.loads(out)["written"]
        rc, out = _run(capsys, *read)
        assert rc == 0 and 2600 < json.loads(out)[0]["value"] < 2800
    finally:
        proc.stop()
