"""OPC UA Basic256Sha256 Sign / SignAndEncrypt on the simulator, with certificates generated here and there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography.x509.oid import ExtendedKeyUsageOID

from devkit.peers import free_port
from simulator.opcua_server import NAMESPACE_URI, OpcUaConfig, OpcUaEndpoint
from simulator.plant import SyntheticPlant
from simulator.runtime import Simulation
from simulator.tags import PROCESS_TAGS

BASIC256 = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
NONE = "http://opcfoundation.org/UA/SecurityPolicy#None"


@dataclass(frozen=True)
class ClientCert:
    uri: str
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientCert]:
    """A trusted and an untrusted client certificate, made the way a gateway makes its own."""
    folder = tmp_path_factory.mktemp("clients")

    async def make(name: str) -> ClientCert:
        uri = f"urn:factoryedge:test:{name}"
        cert, key = folder / f"{name}.der", folder / f"{name}.pem"
        await setup_self_signed_certificate(key, cert, uri, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                            {"commonName": name})
        return ClientCert(uri, cert, key)

    async def both() -> dict[str, ClientCert]:
        return {"trusted": await make("trusted"), "stranger": await make("stranger")}

    return asyncio.run(both())


async def _serving(tmp: Path, security: str, trusted: ClientCert | None,
                   body: Callable[[str, Simulation, OpcUaConfig], Awaitable[None]]) -> None:
    trust_dir = None
    if trusted is not None:
        trust_dir = tmp / "trusted"
        trust_dir.mkdir()
        (trust_dir / "client.der").write_bytes(trusted.cert.read_bytes())
    sim = Simulation(SyntheticPlant(), seed=3)
    sim.advance(10)
    config = OpcUaConfig(port=free_port(), security=security, cert_dir=tmp / "server", trust_dir=trust_dir)
    endpoint = OpcUaEndpoint(sim, config)
    await endpoint.start()
    try:
        await body(f"opc.tcp://127.0.0.1:{config.port}/", sim, config)
    finally:
        await endpoint.stop()


async def _client(url: str, cert: ClientCert | None, mode: Any = None) -> Client:
    client = Client(url, timeout=10)
    if cert is not None:
        client.application_uri = cert.uri  # must match the certificate's URI
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert.cert), str(cert.key), mode=mode)
    return client


async def _read_all(client: Client) -> list[float]:
    ns = await client.get_namespace_index(NAMESPACE_URI)
    return list(await client.read_values([client.get_node(f"ns={ns};s={t.path}") for t in PROCESS_TAGS]))


def test_all_three_modes_are_offered_and_read_the_plant(tmp_path: Path, certs: dict[str, ClientCert]) -> None:
    async def body(url: str, sim: Simulation, config: OpcUaConfig) -> None:
        server_cert = (tmp_path / "server" / "server-cert.der").read_bytes()  # generated into --opcua-cert-dir
        async with Client(url, timeout=10) as plain:
            endpoints = await plain.get_endpoints()
            assert await _read_all(plain) == list(sim.snapshot.values)
        offered = {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints}
        assert offered == {(NONE, ua.MessageSecurityMode.None_), (BASIC256, ua.MessageSecurityMode.Sign),
                           (BASIC256, ua.MessageSecurityMode.SignAndEncrypt)}
        assert all(e.ServerCertificate == server_cert for e in endpoints if e.SecurityPolicyUri == BASIC256)
        for mode in (ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt):
            async with await _client(url, certs["trusted"], mode) as client:
                assert client.security_policy.Mode == mode
                assert await _read_all(client) == list(sim.snapshot.values)
                ns = await client.get_namespace_index(NAMESPACE_URI)
                await client.get_node(f"ns={ns};s=Disturbances/IDV04").write_value(True)  # control works too
                assert sim.snapshot.active_idvs == {4}
                sim.clear_idvs()

    asyncio.run(_serving(tmp_path, "all", certs["trusted"], body))


def test_secured_only_server_refuses_untrusted_and_unsecured_clients(
    tmp_path: Path, certs: dict[str, ClientCert]
) -> None:
    async def body(url: str, sim: Simulation, config: OpcUaConfig) -> None:
        async with await _client(url, certs["trusted"], ua.MessageSecurityMode.SignAndEncrypt) as client:
            assert await _read_all(client) == list(sim.snapshot.values)
        with pytest.raises(UaStatusCodeError) as untrusted:
            async with await _client(url, certs["stranger"], ua.MessageSecurityMode.Sign):
                pass
        assert untrusted.value.code == ua.StatusCodes.BadCertificateUntrusted
        rejected = list((tmp_path / "server" / "rejected").glob("*.der"))
        assert len(rejected) == 1  # kept for the operator, who may trust it: no restart needed
        assert config.trust_dir is not None
        rejected[0].rename(config.trust_dir / rejected[0].name)
        async with await _client(url, certs["stranger"], ua.MessageSecurityMode.Sign) as client:
            assert await _read_all(client) == list(sim.snapshot.values)
        with pytest.raises(UaError, match="No matching endpoints"):  # asyncua itself sees no None endpoint
            async with await _client(url, None):
                pass
        assert await _unsecured_session(url) == ua.StatusCodes.BadSecurityModeRejected

    asyncio.run(_serving(tmp_path, "secure", certs["trusted"], body))


def test_an_empty_trust_folder_trusts_nobody(tmp_path: Path, certs: dict[str, ClientCert]) -> None:
    (tmp_path / "trusted").mkdir()

    async def body() -> None:
        sim = Simulation(SyntheticPlant(), seed=3)
        config = OpcUaConfig(port=free_port(), security="sign", cert_dir=tmp_path / "server",
                             trust_dir=tmp_path / "trusted")
        endpoint = OpcUaEndpoint(sim, config)
        await endpoint.start()
        try:
            with pytest.raises(UaStatusCodeError) as untrusted:
                async with await _client(f"opc.tcp://127.0.0.1:{config.port}/", certs["trusted"],
                                         ua.MessageSecurityMode.Sign):
                    pass
            assert untrusted.value.code == ua.StatusCodes.BadCertificateUntrusted
        finally:
            await endpoint.stop()

    asyncio.run(body())


async def _unsecured_session(url: str) -> int:
    """Open a None channel anyway and try to activate a session on it (what a careless client would do)."""
    client = Client(url, timeout=10)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        params = ua.CreateSessionParameters(
            ClientDescription=ua.ApplicationDescription(ApplicationUri="urn:careless",
                                                        ApplicationType=ua.ApplicationType.Client),
            EndpointUrl=url, SessionName="careless", RequestedSessionTimeout=60000, ClientNonce=b"n" * 32,
        )
        await client.uaclient.create_session(params)
        activate = ua.ActivateSessionParameters(
            UserIdentityToken=ua.AnonymousIdentityToken(PolicyId="anonymous"), LocaleIds=["en"])
        try:
            await client.uaclient.activate_session(activate)
        except UaStatusCodeError as exc:
            return int(exc.code)
        return ua.StatusCodes.Good
    finally:
        client.disconnect_socket()
