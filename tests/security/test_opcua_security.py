"""Adversarial tests of OPC UA security: a rogue server that records every identity it receives.

The rogue is an asyncua server on 127.0.0.1 running in a thread of this process, behind a TCP relay that keeps every
byte the gateway sends (what really goes over the wire). It offers None, Basic256Sha256 Sign and SignAndEncrypt with
a certificate of its own, accepts any client certificate and any user, and writes down each user name and password
it receives (decrypted with its own key, as a rogue would).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from devkit.peers import free_port
from gateway.cli.main import main as gatewayctl
from gateway.collector import Collector
from gateway.componentconfig import OpcUaCollectorConfig
from gateway.config import validate
from gateway.errors import ConfigError, SourceError
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_session import connect, disconnect
from tests.support.opcua_peer import collect, running, until

PASSWORD = "R0gue-sees-Th1s-7"
NS = "urn:factoryedge:test:rogue"
T = TypeVar("T")


class Recorder(UserManager):
    """Accepts everyone and keeps every user name identity, as a rogue server would."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None]] = []

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None or password is not None:
            self.seen.append((username, password))
        return User(role=UserRole.User)


@dataclass
class Rogue:
    folder: Path
    recorder: Recorder = field(default_factory=Recorder)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    server_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)  # the relay's: what the gateway connects to
    wire: bytearray = field(default_factory=bytearray)
    links: list[asyncio.StreamWriter] = field(default_factory=list)
    der: bytes = b""
    server: Server | None = None
    relay: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def call(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(60)

    async def start(self) -> None:
        cert, key = self.folder / "cert.der", self.folder / "key.pem"
        await cert_gen.setup_self_signed_certificate(key, cert, "urn:rogue:server", "localhost",
                                                     [ExtendedKeyUsageOID.SERVER_AUTH], {"organizationName": "rogue"})
        self.der = cert.read_bytes()
        server = Server(user_manager=self.recorder)
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.server_port}")
        await server.set_application_uri("urn:rogue:server")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_Sign,
                                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        idx = await server.register_namespace(NS)
        await server.nodes.objects.add_variable(ua.NodeId(ua.String("Tag"), ua.Int16(idx)), f"{idx}:Tag", 1.5)
        await server.start()
        self.server = server
        self.relay = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.server_port)
        self.links += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await src.read(65536):
                    if keep:
                        self.wire.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    async def cut(self) -> None:
        """Break every relayed connection, as a network cut would."""
        for w in self.links:
            w.transport.abort()
        self.links.clear()

    async def stop(self) -> None:
        if self.relay is not None:
            self.relay.close()
        await self.cut()
        if self.server is not None:
            await self.server.stop()

    def reset(self) -> None:
        self.recorder.seen.clear()
        self.wire.clear()

    def plain_token_on_sign(self, plain: bool) -> None:
        """Make the Sign endpoint ask for the password unencrypted (a misconfigured or hostile server)."""
        assert self.server is not None
        for ep in self.server.iserver.endpoints:
            if ep.SecurityMode == ua.MessageSecurityMode.Sign:
                for tok in ep.UserIdentityTokens:
                    if tok.TokenType == ua.UserTokenType.UserName:
                        tok.SecurityPolicyUri = SecurityPolicyNone.URI if plain else ep.SecurityPolicyUri


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rogue]:
    r = Rogue(tmp_path_factory.mktemp("rogue"))
    thread = threading.Thread(target=r.loop.run_forever, name="rogue-opcua", daemon=True)
    thread.start()
    r.call(r.start())
    yield r
    r.call(r.stop())
    r.loop.call_soon_threadsafe(r.loop.stop)
    thread.join(10)


@pytest.fixture
def fresh(rogue: Rogue) -> Rogue:
    rogue.reset()
    return rogue


def _conn(rogue: Rogue, **sec: Any) -> dict[str, Any]:
    return {"name": "rogue", "endpoint": rogue.url, "namespace_uri": NS, "nodes": ["s=Tag"], "mode": "polling",
            "scan_interval_s": 0.1, "timeout_s": 3, "keepalive_s": 1, "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.3, "security": sec}


def read(name: str, n: int) -> Callable[[Collector], bool]:
    return lambda c: name in c.connections and c.connections[name].counters.values_read >= n


def _validate(conn: dict[str, Any]) -> OpcUaConnection:
    return validate(OpcUaCollectorConfig, {"connections": [conn]}, origin="test").connections[0]


async def _session(cfg: OpcUaConnection) -> ua.MessageSecurityMode:
    client = await connect(cfg)
    try:
        return client.security_policy.Mode
    finally:
        await disconnect(client)


def _refused_or_run(conn: dict[str, Any]) -> ConfigError | None:
    """The refusal, or None after the configuration (accepted) has opened a session to the rogue."""
    try:
        cfg = _validate(conn)
    except ConfigError as exc:
        return exc
    asyncio.run(_session(cfg))
    return None


def _trust_pinned(rogue: Rogue, trust_dir: Path) -> None:
    sha256 = hashlib.sha256(rogue.der).hexdigest()
    assert gatewayctl(["opcua", "trust", rogue.url, "--trust-dir", str(trust_dir), "--accept",
                       "--thumbprint", sha256]) == 0


def test_password_on_a_plain_channel_is_refused_and_never_sent(fresh: Rogue) -> None:
    refused = _refused_or_run(_conn(fresh, username="op", password=PASSWORD))
    assert fresh.recorder.seen == [] and PASSWORD.encode() not in fresh.wire
    assert refused is not None, "a password went to the rogue over security None"
    [line] = refused.problems
    assert "security.password" in line and "allow_insecure_identity: true" in line and PASSWORD not in line


def test_allowed_insecure_identity_connects_and_warns_once(tmp_path: Path, fresh: Rogue,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = _validate(_conn(fresh, username="op", password=PASSWORD, allow_insecure_identity=True))
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        def reconnected(col: Collector) -> bool:
            c = col.connections["rogue"].counters
            return c.connect_retries >= 1 and c.connected and c.values_read >= 10

        await collect(tmp_path, [cfg], read("rogue", 3))
        async with running(tmp_path / "again", [cfg]) as (col, task):  # a reload in the same process, then a cut
            await until(col, task, read("rogue", 3))
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fresh.cut(), fresh.loop))
            await until(col, task, reconnected)

    asyncio.run(scenario())
    assert ("op", PASSWORD) in fresh.recorder.seen  # it did go, knowingly
    ours = [r for r in caplog.records if r.name.startswith("gateway")]
    identity = [r for r in ours if "allow_insecure_identity" in r.getMessage()]
    plain = [r for r in ours if "plain channel" in r.getMessage()]
    assert len(identity) == 1 and identity[0].levelno == logging.WARNING, [r.getMessage() for r in ours]
    assert len(plain) == 1 and "anyone on the network can read and alter values" in plain[0].getMessage()
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
def test_signed_channels_carry_the_password_encrypted(tmp_path: Path, fresh: Rogue, mode: str) -> None:
    _trust_pinned(fresh, tmp_path / "trusted")
    cfg = _validate(_conn(fresh, policy="Basic256Sha256", mode=mode, pki_dir=str(tmp_path / "pki"),
                          trust_dir=str(tmp_path / "trusted"), username="op", password=PASSWORD))
    assert asyncio.run(_session(cfg)) == getattr(ua.MessageSecurityMode, mode)
    assert fresh.recorder.seen == [("op", PASSWORD)]  # the server still authenticates it
    assert PASSWORD.encode() not in fresh.wire and PASSWORD.encode("utf-16-le") not in fresh.wire


def test_sign_channel_refuses_a_server_asking_for_the_password_in_clear(tmp_path: Path, fresh: Rogue) -> None:
    _trust_pinned(fresh, tmp_path / "trusted")
    cfg = _validate(_conn(fresh, policy="Basic256Sha256", mode="Sign", pki_dir=str(tmp_path / "pki"),
                          trust_dir=str(tmp_path / "trusted"), username="op", password=PASSWORD))
    fresh.plain_token_on_sign(True)
    try:
        with pytest.raises(SourceError) as info:
            asyncio.run(_session(cfg))
    finally:
        fresh.plain_token_on_sign(False)
    assert fresh.recorder.seen == [] and PASSWORD.encode() not in fresh.wire
    assert "SignAndEncrypt" in info.value.fix and PASSWORD not in str(info.value)


VALID = {(None, None), ("None", None), (None, "None"), ("None", "None"), ("Basic256Sha256", "Sign"),
         ("Basic256Sha256", "SignAndEncrypt")}


@pytest.mark.parametrize("policy", [None, "None", "Basic256Sha256"])
@pytest.mark.parametrize("mode", [None, "None", "Sign", "SignAndEncrypt"])
def test_every_policy_and_mode_combination_is_valid_or_refused(tmp_path: Path, fresh: Rogue, policy: str | None,
                                                                mode: str | None) -> None:
    sec: dict[str, Any] = {"pki_dir": str(tmp_path / "pki"), "trust_dir": str(tmp_path / "trusted")}
    sec |= {k: v for k, v in (("policy", policy), ("mode", mode)) if v is not None}
    if (policy, mode) not in VALID:
        with pytest.raises(ConfigError) as info:
            _validate(_conn(fresh, **sec))
        [line] = info.value.problems
        assert line.startswith("connections.0.security.mode") and "set security." in line, line
        return
    cfg = _validate(_conn(fresh, **sec))
    if policy == "Basic256Sha256":
        _trust_pinned(fresh, tmp_path / "trusted")
    expected = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
    assert asyncio.run(_session(cfg)) == expected.get(mode or "None", ua.MessageSecurityMode.None_)


def test_user_info_in_the_endpoint_is_refused_without_showing_it(fresh: Rogue,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    conn = _conn(fresh) | {"endpoint": f"opc.tcp://op:{PASSWORD}@127.0.0.1:{fresh.port}"}
    refused = _refused_or_run(conn)
    assert fresh.recorder.seen == []
    assert refused is not None, "credentials in the endpoint URL were accepted"
    [line] = refused.problems
    assert line.startswith("connections.0.endpoint") and PASSWORD not in line and "op:" not in line
    for argv in (["opcua", "read", conn["endpoint"], "i=2255"],
                 ["opcua", "trust", conn["endpoint"], "--trust-dir", "/nonexistent/trust"]):
        assert gatewayctl(argv) == 2
        out = capsys.readouterr()
        assert len(out.err.strip().splitlines()) == 1 and PASSWORD not in out.err + out.out, out
    assert fresh.recorder.seen == []


def test_trust_accept_needs_the_right_sha256(tmp_path: Path, rogue: Rogue,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    trust_dir = tmp_path / "trusted"
    sha256, sha1 = hashlib.sha256(rogue.der).hexdigest(), hashlib.sha1(rogue.der).hexdigest()
    base = ["opcua", "trust", rogue.url, "--trust-dir", str(trust_dir)]
    assert gatewayctl([*base, "--accept"]) == 2
    assert "--thumbprint" in capsys.readouterr().err
    for wrong in ("0" * 64, sha256[:-1] + ("0" if sha256[-1] != "0" else "1")):
        assert gatewayctl([*base, "--accept", "--thumbprint", wrong]) == 1
        assert "does not match" in capsys.readouterr().err
    assert gatewayctl([*base, "--accept", "--thumbprint", sha1]) == 2  # SHA-1 no longer pins
    assert "not a SHA-256 thumbprint" in capsys.readouterr().err
    assert not trust_dir.exists() or not any(trust_dir.iterdir())
    assert gatewayctl([*base, "--json"]) == 1  # shown, not trusted
    shown = json.loads(capsys.readouterr().out)
    assert shown["thumbprint"] == sha256 and shown["trusted"] is False
    colons = ":".join(sha256[i : i + 2] for i in range(0, 64, 2)).upper()  # as certificate viewers show it
    assert gatewayctl([*base, "--accept", "--thumbprint", colons]) == 0
    assert "written to" in capsys.readouterr().out and len(list(trust_dir.iterdir())) == 1
    assert gatewayctl([*base, "--json"]) == 0 and json.loads(capsys.readouterr().out)["trusted"] is True


def test_doctor_warns_about_a_plain_channel(tmp_path: Path, rogue: Rogue) -> None:
    from gateway.sources.opcua_diagnose import diagnose

    found = {f.check.split(": ", 1)[1]: f for f in asyncio.run(diagnose(_validate(_conn(rogue)), 5))}
    assert found["security"].ok is None and "plain channel" in found["security"].detail
    assert "SignAndEncrypt" in found["security"].fix and found["session"].ok is True
