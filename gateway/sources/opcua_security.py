"""OPC UA security for the collector and the CLI: policy and mode, the client certificate, the server trust list and
the user identity.

The client certificate is generated once into ``pki_dir`` (kept across restarts, regenerated only when missing,
expired or not matching the application URI) or provided as files. Server certificates are trusted by putting them
into ``trust_dir`` (``gatewayctl opcua trust URL --accept`` does it); a server whose certificate is not there, or is
expired, is refused with that fix in the message. Certificates are identified and pinned by their SHA-256
thumbprint (SHA-1, what many OPC UA tools still show, is given for comparison only). Passwords are
:class:`~pydantic.SecretStr` and never logged; a password goes only where it travels encrypted for a trusted
certificate or inside an encrypted channel, unless ``allow_insecure_identity`` says otherwise (see
:func:`check_identity_transport`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import SourceError
from gateway.redact import redact_url

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.opcua_config import OpcUaSecurity

log = logging.getLogger(__name__)

POLICY_URIS = {
    "None": "http://opcfoundation.org/UA/SecurityPolicy#None",
    "Basic256Sha256": SecurityPolicyBasic256Sha256.URI,
}
MODES = {"None": ua.MessageSecurityMode.None_, "Sign": ua.MessageSecurityMode.Sign,
         "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


@dataclass(frozen=True)
class CertInfo:
    """What an engineer needs to decide whether to trust a certificate."""

    subject: str
    thumbprint: str  # SHA-256 of the DER, lower-case hex: what the trust list pins
    sha1: str  # SHA-1 of the DER, as UaExpert and most OPC UA servers show it; never used to pin
    not_before: dt.datetime
    not_after: dt.datetime
    application_uri: str | None

    @property
    def expired(self) -> bool:
        now = dt.datetime.now(dt.timezone.utc)
        return not self.not_before <= now <= self.not_after

    def as_dict(self) -> dict[str, str | bool | None]:
        return {"subject": self.subject, "thumbprint": self.thumbprint, "sha1": self.sha1,
                "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "application_uri": self.application_uri,
                "expired": self.expired}


def cert_info(der: bytes) -> CertInfo:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return CertInfo(cert.subject.rfc4514_string(), sha256_thumbprint(der), hashlib.sha1(der).hexdigest(),
                    cert.not_valid_before_utc, cert.not_valid_after_utc, uris[0] if uris else None)


def sha256_thumbprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def normalize_thumbprint(text: str) -> str:
    """A thumbprint as typed or pasted (``AB:CD:…``, spaces, upper case) in the form :class:`CertInfo` shows it."""
    return "".join(ch for ch in text if ch not in ": \t").lower()


def load_der(path: Path) -> bytes:
    """A certificate file (DER or PEM) as DER bytes."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def trusted_thumbprints(trust_dir: Path) -> set[str]:
    """Thumbprints of every readable certificate in the trust folder (unreadable files are skipped)."""
    found: set[str] = set()
    if trust_dir.is_dir():
        for p in trust_dir.iterdir():
            if p.is_file() and p.suffix.lower() in (".der", ".pem", ".crt", ".cer"):
                try:
                    found.add(sha256_thumbprint(load_der(p)))
                except ValueError:
                    continue
    return found


def trust(der: bytes, trust_dir: Path) -> Path:
    """Put a server certificate into the trust list; returns the file written."""
    info = cert_info(der)
    trust_dir.mkdir(parents=True, exist_ok=True)
    cn = info.subject.split(",")[0].split("=")[-1]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cn)[:40] or "server"
    path = trust_dir / f"{safe}[{info.thumbprint}].der"
    path.write_bytes(der)
    return path


def check_server_certificate(der: bytes, sec: OpcUaSecurity, url: str) -> CertInfo:
    """Refuse an expired or untrusted server certificate with the fix in the message."""
    url = redact_url(url)
    info = cert_info(der)
    if info.expired:
        raise SourceError(
            f"{url}: the server certificate {info.subject} (thumbprint {info.thumbprint}) is not valid now "
            f"(valid {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d})",
            fix="renew the server's certificate on the server, then trust the new one with "
            f"`gatewayctl opcua trust {url} --accept --thumbprint SHA256 --trust-dir {sec.trust_path()}`",
        )
    if info.thumbprint not in trusted_thumbprints(sec.trust_path()):
        raise SourceError(
            f"{url}: the server certificate {info.subject} (SHA-256 thumbprint {info.thumbprint}) is not in the "
            f"trust list {sec.trust_path()}",
            fix="read the certificate's SHA-256 thumbprint on the server itself (not from this message), then trust "
            f"it with `gatewayctl opcua trust {url} --accept --thumbprint SHA256 --trust-dir {sec.trust_path()}`",
        )
    return info


def default_application_uri() -> str:
    return f"urn:{socket.gethostname()}:factoryedge:gateway"


async def client_certificate(sec: OpcUaSecurity) -> tuple[Path, Path, str]:
    """The client certificate, key and application URI to use: provided, or generated once into pki_dir/own."""
    if sec.certificate and sec.private_key:
        info = cert_info(load_der(Path(sec.certificate)))
        if info.expired:
            raise SourceError(
                f"client certificate {sec.certificate} ({info.subject}) is not valid now "
                f"(valid {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d})",
                fix="issue a new certificate, or remove security.certificate to let the gateway generate one",
            )
        uri = sec.application_uri or info.application_uri or default_application_uri()
        if info.application_uri and uri != info.application_uri:
            raise SourceError(
                f"security.application_uri {uri} does not match the certificate's URI {info.application_uri}",
                fix="set security.application_uri to the certificate's URI, or remove it",
            )
        return Path(sec.certificate), Path(sec.private_key), uri
    uri = sec.application_uri or default_application_uri()
    own = Path(sec.pki_dir) / "own"
    own.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = own / "cert.der", own / "key.pem"
    before = sha256_thumbprint(cert.read_bytes()) if cert.is_file() else None
    # regenerates only when missing, expired or for another URI: the server keeps trusting the same certificate.
    # asyncua writes the key with the process umask: 077 while it does, so the key is never readable by others,
    # whoever calls this (a component sets 077 at start, gatewayctl too, a library user may not)
    mask = os.umask(0o077)
    try:
        await cert_gen.setup_self_signed_certificate(key, cert, uri, socket.gethostname(),
                                                     [ExtendedKeyUsageOID.CLIENT_AUTH],
                                                     {"organizationName": "factoryedge"})
    finally:
        os.umask(mask)
    os.chmod(own, 0o700)
    os.chmod(key, 0o600)  # also a key generated by an earlier version (0644)
    info = cert_info(cert.read_bytes())
    if info.thumbprint != before:  # the renewal that silently breaks reconnects elsewhere (NOTES 12): say it once
        log.warning("OPC UA client certificate %s %s for %s (thumbprint %s, valid until %s): servers with "
                    "security must trust it (copy it into their trusted certificates)", cert,
                    "generated" if before is None else "renewed (expired or URI changed)", uri, info.thumbprint,
                    f"{info.not_after:%Y-%m-%d}")
    return cert, key, uri


def _endpoint(endpoints: list[ua.EndpointDescription], sec: OpcUaSecurity, url: str) -> ua.EndpointDescription:
    mode = MODES[sec.mode]
    for ep in endpoints:
        if ep.SecurityMode == mode and ep.SecurityPolicyUri == POLICY_URIS[sec.policy]:
            return ep
    offered = ", ".join(sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}"
                                for e in endpoints}))
    raise SourceError(f"{redact_url(url)}: the server offers no endpoint with {sec.policy}/{sec.mode} "
                      f"(it offers {offered})",
                      fix="set security.policy and security.mode to one the server offers, or enable it on the server")


class GuardedClient(Client):
    """An asyncua client that decides, at the moment it is about to send a password, whether it may.

    asyncua (``Client._add_user_auth``) encrypts the password for the server certificate when the server's UserName
    token policy names a security policy (an empty one means the channel's), and sends it in clear, with only a log
    line, when that policy is None. On a channel with mode None no server certificate is checked, so either way the
    password reaches whoever answers; on mode Sign it travels in clear if the (trusted) server asks for a token
    policy None; on SignAndEncrypt the channel itself is encrypted. The server chooses the token policy, in its
    CreateSession answer, after the configuration was validated: hence this check here.
    """

    def __init__(self, url: str, *, allow_insecure_identity: bool = False, timeout: float = 4,
                 watchdog_intervall: float = 1.0) -> None:
        super().__init__(url, timeout=timeout, watchdog_intervall=watchdog_intervall)
        self.allow_insecure_identity = allow_insecure_identity

    async def activate_session(self, username: str | None = None, password: str | None = None,
                               certificate: x509.Certificate | None = None) -> ua.ActivateSessionResult:
        if password and not certificate and not self.allow_insecure_identity:
            self._refuse_plain_password(username or "")
        return await super().activate_session(username, password, certificate)

    def _refuse_plain_password(self, username: str) -> None:
        mode = self.security_policy.Mode
        if mode == ua.MessageSecurityMode.SignAndEncrypt:
            return
        token = self.server_policy(ua.UserTokenType.UserName).SecurityPolicyUri
        if mode == ua.MessageSecurityMode.Sign and token and token != POLICY_URIS["None"]:
            return  # encrypted for the server certificate checked against the trust list
        how = "in clear" if not token or token == POLICY_URIS["None"] else "to an unchecked server certificate"
        raise SourceError(
            f"{redact_url(self.server_url.geturl())}: the server asks for the password of user {username} {how} "
            f"on a channel with mode {mode.name.rstrip('_')}; it was not sent",
            fix="use security.mode: SignAndEncrypt (the channel then encrypts it), or set "
            "security.allow_insecure_identity: true to send it anyway", retryable=False)


async def server_certificate(url: str, timeout_s: float) -> tuple[list[ua.EndpointDescription], bytes]:
    """The server's endpoints and certificate (DER), read over an unsecured discovery channel."""
    probe = Client(url, timeout=timeout_s)
    endpoints = list(await probe.connect_and_get_server_endpoints())
    der = b""
    for ep in endpoints:
        if ep.ServerCertificate:
            der = first_cert(ep.ServerCertificate)
            break
    return endpoints, der


def first_cert(blob: bytes) -> bytes:
    """A ServerCertificate field may hold a chain; the leaf is the first DER sequence."""
    if len(blob) < 4 or blob[0] != 0x30:
        return blob
    if blob[1] & 0x80:
        n = blob[1] & 0x7F
        length = int.from_bytes(blob[2 : 2 + n], "big") + 2 + n
    else:
        length = blob[1] + 2
    return blob[:length]


async def secure(client: Client, sec: OpcUaSecurity, url: str, timeout_s: float) -> None:
    """Apply policy, mode, certificates and identity to a client before ``connect``."""
    cert, key, uri = await client_certificate(sec) if sec.secure or sec.user_certificate else (None, None, "")
    if uri:
        client.application_uri = uri
    if sec.secure:
        assert cert is not None and key is not None
        endpoints, _ = await server_certificate(url, timeout_s)
        ep = _endpoint(endpoints, sec, url)
        der = first_cert(ep.ServerCertificate)
        check_server_certificate(der, sec, url)
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key), server_certificate=der,
                                  mode=MODES[sec.mode])
    if sec.username and sec.password is not None:
        client.set_user(sec.username)
        client.set_password(sec.password.get_secret_value())
    elif sec.user_certificate and sec.user_private_key:
        info = cert_info(load_der(Path(sec.user_certificate)))
        if info.expired:
            raise SourceError(f"user certificate {sec.user_certificate} ({info.subject}) is not valid now "
                              f"(valid until {info.not_after:%Y-%m-%d})", fix="issue a new user certificate")
        await client.load_client_certificate(sec.user_certificate)
        await client.load_private_key(Path(sec.user_private_key))
