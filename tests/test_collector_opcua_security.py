"""OPC UA security against node-opcua: modes, identities, trust lists, certificates and static config mistakes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from devkit.peers import free_port
from gateway.cli.main import main as gatewayctl
from gateway.collector import Collector
from gateway.componentconfig import OpcUaCollectorConfig
from gateway.config import validate
from gateway.errors import ConfigError, SourceError
from gateway.record import Quality
from gateway.sources.opcua_config import OpcUaSecurity
from gateway.sources.opcua_security import (
    cert_info,
    check_server_certificate,
    client_certificate,
    load_der,
    trust,
)
from tests.support.opcua_peer import NodeOpcUa, collect, conn, records, require_node, written

PASSWORD = "s3cret-Pw-9f2"


@dataclass
class Secured:
    server: NodeOpcUa
    pki: Path       # the gateway's pki_dir, its certificate trusted by the server, the server's trusted by it
    user_cert: Path
    user_key: Path


def _self_signed(folder: Path, uri: str, *, days: int = 30, expired: bool = False) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, uri, {"organizationName": "factoryedge tests"}, [x509.UniformResourceIdentifier(uri)],
        [ExtendedKeyUsageOID.CLIENT_AUTH], days=days)
    if expired:  # re-sign the same content with a validity window in the past
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=60)).not_valid_after(now - dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
                .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.der", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    require_node()
    root = tmp_path_factory.mktemp("opcua-sec")
    pki = root / "gw-pki"
    cert, _, _ = asyncio.run(client_certificate(OpcUaSecurity(pki_dir=str(pki))))
    user_cert, user_key = _self_signed(root / "user", "urn:factoryedge:test:operator")
    server = NodeOpcUa(root / "peer", free_port(), {"security": "none,sign,signandencrypt", "user": f"op:{PASSWORD}"})
    server.folder.mkdir(parents=True, exist_ok=True)
    server.trust_client(cert)
    server.trust_client(user_cert, user=True)
    server.start()
    trust(load_der(server.cert), pki / "trusted")
    yield Secured(server, pki, user_cert, user_key)
    server.stop()


def _sha256(cert: Path) -> str:
    return hashlib.sha256(load_der(cert)).hexdigest()


def _sec(s: Secured, **kw: Any) -> dict[str, Any]:
    return {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "pki_dir": str(s.pki), **kw}


@pytest.mark.parametrize(("mode", "identity"), [("Sign", "anonymous"), ("SignAndEncrypt", "username"),
                                                ("SignAndEncrypt", "certificate"), ("None", "username")])
def test_security_modes_and_identities(tmp_path: Path, secured: Secured, mode: str, identity: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    sec: dict[str, Any] = {"mode": mode, "policy": "None" if mode == "None" else "Basic256Sha256",
                           "pki_dir": str(secured.pki)}
    if identity == "username":
        # on mode None only knowingly: tests/security/test_opcua_security.py shows where such a password goes
        sec |= {"username": "op", "password": PASSWORD, "allow_insecure_identity": mode == "None"}
    elif identity == "certificate":
        sec |= {"user_certificate": str(secured.user_cert), "user_private_key": str(secured.user_key)}
    caplog.set_level(logging.DEBUG)
    asyncio.run(collect(tmp_path, [conn(secured.server, security=sec)], written("peer", 10)))
    recs = records(tmp_path)
    assert len(recs) >= 10 and all(r.quality == Quality.GOOD for r in recs)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in (tmp_path / "status" / "test.json").read_text()


def _error(c: Collector, text: str) -> bool:
    return "peer" in c.connections and text in c.connections["peer"].counters.last_error


def test_untrusted_server_certificate_refused_then_accepted_after_trusting(tmp_path: Path, secured: Secured) -> None:
    trust_dir = tmp_path / "trust"
    c = conn(secured.server, security=_sec(secured, trust_dir=str(trust_dir)))

    async def scenario() -> None:
        async def trust_it(col: Collector) -> None:
            msg = col.connections["peer"].counters.last_error
            assert (f"gatewayctl opcua trust {secured.server.url} --accept --thumbprint SHA256 --trust-dir "
                    f"{trust_dir}") in msg
            assert col.connections["peer"].counters.values_written == 0
            rc = await asyncio.to_thread(gatewayctl, ["opcua", "trust", secured.server.url, "--accept",
                                                      "--thumbprint", _sha256(secured.server.cert),
                                                      "--trust-dir", str(trust_dir), "--json"])
            assert rc == 0

        col = await collect(tmp_path, [c], lambda col: _error(col, "is not in the trust list"))
        await trust_it(col)
        col = await collect(tmp_path / "after", [c], written("peer", 5))
        assert col.connections["peer"].counters.connected

    asyncio.run(scenario())


def test_trust_command_shows_the_certificate(tmp_path: Path, secured: Secured,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    trust_dir = tmp_path / "trust"
    assert gatewayctl(["opcua", "trust", secured.server.url, "--trust-dir", str(trust_dir), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["trusted"] is False and not trust_dir.exists()
    assert shown["application_uri"] == "urn:factoryedge:test-peer:node-opcua"
    assert shown["thumbprint"] == _sha256(secured.server.cert)  # pinned by SHA-256; SHA-1 shown for comparison
    assert gatewayctl(["opcua", "trust", secured.server.url, "--trust-dir", str(trust_dir), "--accept",
                       "--thumbprint", shown["thumbprint"]]) == 0
    assert "written to" in capsys.readouterr().out and len(list(trust_dir.iterdir())) == 1
    assert gatewayctl(["opcua", "trust", secured.server.url, "--trust-dir", str(trust_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trusted"] is True


def test_server_refusing_our_certificate_says_where_it_is(tmp_path: Path, secured: Secured) -> None:
    pki = tmp_path / "other-pki"  # a fresh client certificate the server has never seen
    c = conn(secured.server, security=_sec(secured, pki_dir=str(pki), trust_dir=str(secured.pki / "trusted")))
    col = asyncio.run(collect(tmp_path, [c], lambda col: _error(col, "refused the session")))
    assert str(pki / "own" / "cert.der") in col.connections["peer"].counters.last_error


def test_wrong_password_is_named_but_never_logged(tmp_path: Path, secured: Secured,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = conn(secured.server, security=_sec(secured, username="op", password="Wr0ng-pw-77"))
    col = asyncio.run(collect(tmp_path, [c], lambda col: _error(col, "username/password")))
    assert col.connections["peer"].counters.values_written == 0
    assert "Wr0ng-pw-77" not in caplog.text


def test_expired_client_certificate_is_a_clear_error(tmp_path: Path, secured: Secured) -> None:
    cert, key = _self_signed(tmp_path / "old", "urn:factoryedge:test:old", expired=True)
    c = conn(secured.server, security=_sec(secured, certificate=str(cert), private_key=str(key),
                                           trust_dir=str(secured.pki / "trusted")))
    col = asyncio.run(collect(tmp_path, [c], lambda col: _error(col, "is not valid now")))
    assert "issue a new certificate" in col.connections["peer"].counters.last_error


def test_static_mistakes_name_the_field_and_the_fix(tmp_path: Path) -> None:
    base = {"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": ["ns=2;s=A"]}
    data = {"connections": [
        {"name": "a", **base, "security": {"policy": "Basic256Sha256", "mode": "Sign", "password": "x"}},
        {"name": "b", **base, "security": {"mode": "Sign"}},
        {"name": "c", **base, "security": {"policy": "Basic256Sha256", "mode": "Sign",
                                           "certificate": str(tmp_path / "missing.der"),
                                           "private_key": str(tmp_path / "missing.pem")}},
        {"name": "d", "endpoint": base["endpoint"]},
        {"name": "e", "endpoint": base["endpoint"], "nodes": ["ns=2;q=bad"]},
    ]}
    with pytest.raises(ConfigError) as info:
        validate(OpcUaCollectorConfig, data, origin="test")
    text = "\n".join(info.value.problems)
    assert "connections.0.security.username" in text and "password is set without username" in text
    assert "connections.1.security.mode" in text and "set security.policy: Basic256Sha256" in text
    assert f"connections.2.security.certificate: Value error, file {tmp_path / 'missing.der'} does not exist" in text
    assert "connections.3.nodes: Field required" in text and "browse" in text
    assert "connections.4.nodes" in text and "cannot be parsed" in text
    assert "'x'" not in text  # the password is never echoed


def test_generated_certificate_is_kept_across_restarts_and_matches_the_uri(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    sec = OpcUaSecurity(pki_dir=str(tmp_path / "pki"), application_uri="urn:site:gw1")
    cert1, _, uri = asyncio.run(client_certificate(sec))
    first = cert_info(load_der(cert1))
    assert f"{cert1} generated for urn:site:gw1 (thumbprint {first.thumbprint}" in caplog.text
    caplog.clear()
    cert2, _, _ = asyncio.run(client_certificate(sec))  # a restart: same files, nothing regenerated, nothing said
    assert cert_info(load_der(cert2)).thumbprint == first.thumbprint and not caplog.text
    assert uri == first.application_uri == "urn:site:gw1" and not first.expired


def test_expired_server_certificate_is_refused_with_the_fix(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path / "srv", "urn:some:server", expired=True)
    der = load_der(cert)
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="Sign", pki_dir=str(tmp_path / "pki"))
    trust(der, sec.trust_path())  # even a trusted certificate is refused once expired
    with pytest.raises(SourceError) as info:
        check_server_certificate(der, sec, "opc.tcp://plc:4840")
    assert "is not valid now" in info.value.message and "renew the server's certificate" in info.value.fix
