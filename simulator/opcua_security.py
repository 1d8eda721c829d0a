"""Security of the simulator's OPC UA endpoint: Basic256Sha256 policies, the generated server certificate and the
optional list of trusted client certificates.

``--opcua-security sign|encrypt|secure|all`` offers Basic256Sha256 Sign, SignAndEncrypt, both (``secure``: no
unsecured endpoint at all) or both plus None (``all``).
The server's self-signed certificate is generated once into ``--opcua-cert-dir`` (``server-cert.der``,
``server-key.pem``; regenerated when missing, expired or issued for another host). Client certificates are
accepted from anyone unless ``--opcua-trust-dir`` names a folder of trusted certificates (DER or PEM): then any
other client is refused with ``BadCertificateUntrusted`` and its certificate is saved under
``<cert-dir>/rejected/`` so an operator can move it into the trust folder (read again when it changes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from asyncua import ua as _ua

log = logging.getLogger(__name__)
ua: Any = _ua  # see simulator.opcua_server: asyncua's NewType annotations reject plain values

APPLICATION_URI = "urn:factoryedge:tep:simulator"
SECURITY_MODES = ("none", "sign", "encrypt", "secure", "all")
_POLICIES = {
    "none": [ua.SecurityPolicyType.NoSecurity],
    "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign],
    "encrypt": [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
    "secure": [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
    "all": [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
}


def policies(mode: str) -> list[Any]:
    """The asyncua security policy types ``mode`` offers."""
    if mode not in _POLICIES:
        raise ValueError(f"OPC UA security {mode!r} unknown: use one of {', '.join(SECURITY_MODES)}")
    return list(_POLICIES[mode])


async def ensure_certificate(cert_dir: Path | None, host: str) -> tuple[Path, Path]:
    """Generate (once) a self-signed server certificate whose application URI matches the server's.

    Returns:
        ``(certificate DER file, private key PEM file)``.
    """
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if cert_dir is None:
        raise ValueError("OPC UA security needs a certificate directory: pass --opcua-cert-dir")
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = cert_dir / "server-cert.der", cert_dir / "server-key.pem"
    await setup_self_signed_certificate(
        key_file, cert_file, APPLICATION_URI, host, [ExtendedKeyUsageOID.SERVER_AUTH],
        {"countryName": "DE", "organizationName": "factory-edge-gateway", "commonName": "TEP simulator"},
    )
    key_file.chmod(0o600)
    return cert_file, key_file


async def setup_security(server: Any, mode: str, host: str, cert_dir: Path | None, trust_dir: Path | None) -> None:
    """Configure ``server`` (an asyncua ``Server`` after ``init()``) for ``mode``; see the module docstring."""
    server.set_security_policy(policies(mode))
    if mode == "none":
        return
    cert_file, key_file = await ensure_certificate(cert_dir, host)
    await server.load_certificate(str(cert_file))
    await server.load_private_key(str(key_file))
    if ua.SecurityPolicyType.NoSecurity not in policies(mode):
        # asyncua still opens unsecured channels (for GetEndpoints) and lets a session be created and activated
        # on them, which would serve every value unsigned and unencrypted: refuse the activation instead.
        server.iserver.set_user_manager(_SecuredChannelsOnly(server.iserver.user_manager))
    if trust_dir is None:
        log.warning("OPC UA accepts ANY client certificate; pass --opcua-trust-dir to accept only trusted ones")
        return
    if not trust_dir.is_dir():
        raise ValueError(f"--opcua-trust-dir {trust_dir}: not a directory; create it and put client certificates in")
    trust = _TrustFolder(trust_dir)
    await trust.refresh()
    rejected_dir = (cert_dir or trust_dir) / "rejected"

    async def validate(cert: Any, app: Any) -> None:
        try:
            await (await trust.refresh()).validate(cert, app)
        except Exception:
            _keep_rejected(rejected_dir, cert, app)
            raise

    server.set_certificate_validator(validate)


class _TrustFolder:
    """The trusted client certificates, re-read when the folder changes (a certificate moved in from
    ``rejected/`` counts from the next connection, no restart)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: tuple[int, int] | None = None
        self._validator: Any = None

    async def refresh(self) -> Any:
        """The validator for the folder's current content."""
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        stat = self.folder.stat()
        stamp = (stat.st_mtime_ns, len(list(self.folder.iterdir())))
        if stamp != self._stamp:
            store = TrustStore([self.folder], [])
            try:
                await store.load()
            except ValueError:  # cryptography refuses an empty store: then nobody is trusted
                log.warning("--opcua-trust-dir %s holds no certificate: every client certificate is refused until "
                            "one is put there", self.folder)
            options = (CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.TRUSTED
                       | CertificateValidatorOptions.PEER_CLIENT)
            self._validator = CertificateValidator(options, store)
            self._stamp = stamp
        return self._validator


def _keep_rejected(folder: Path, cert: Any, app: Any) -> None:
    """Save a refused client certificate where an operator can inspect it and move it into the trust folder."""
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cert.serial_number:x}.der"
        path.write_bytes(cert.public_bytes(Encoding.DER))
    except OSError as exc:  # keeping a copy is a courtesy; the refusal stands either way
        log.warning("could not save the refused client certificate in %s: %s", folder, exc)
        return
    log.warning("OPC UA client %s refused: certificate not trusted (saved as %s; move it into the trust folder "
                "to accept it)", getattr(app, "ApplicationUri", "?"), path)


class _SecuredChannelsOnly:
    """Refuses session activation on a channel without a client certificate, i.e. an unsecured one.

    asyncua hands the user manager the certificate the secure channel was opened with (empty on a
    ``SecurityPolicy#None`` channel), so this is where such a session can be stopped.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        from asyncua.common.utils import ServiceError

        if not certificate:  # None, or b'' on a SecurityPolicy#None channel
            log.warning("OPC UA session on an unsecured channel refused: this server only offers Basic256Sha256")
            raise ServiceError(ua.StatusCodes.BadSecurityModeRejected)
        return self.inner.get_user(iserver, username=username, password=password, certificate=certificate)
