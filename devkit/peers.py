"""Real peers for tests and the demo: started as processes bound to 127.0.0.1 on free ports, stopped by PID.

Nothing here sleeps to synchronise: readiness is a port that accepts connections, within a deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy, and return that; fail after ``timeout`` seconds.

    Args:
        cond: checked at once, then every ``interval`` seconds.
        timeout: seconds to wait before giving up.
        what: what is awaited, for the error message.
        interval: seconds between checks.

    Returns:
        The first truthy value ``cond`` returned (so a caller can wait for a line, a snapshot or a status).

    Raises:
        TimeoutError: ``cond`` stayed falsy for ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while not (result := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return result


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A peer process; ``stop`` kills it by PID (and its process group)."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        return int(self.popen.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start(cmd: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                 env={**os.environ, **(env or {})}, start_new_session=True)
    return Proc(popen, log)


# --- a small PKI for TLS peers ------------------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "factoryedge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, server: bool) -> tuple[bytes, bytes]:
        key = _key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    s_cert, s_key = leaf("localhost", True)
    c_cert, c_key = leaf("factoryedge-publisher", False)
    return Pki(
        _write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        _write(folder / "server.pem", s_cert), _write(folder / "server.key", s_key),
        _write(folder / "client.pem", c_cert), _write(folder / "client.key", c_key),
    )


# --- mosquitto ------------------------------------------------------------------------------------------------------
@dataclass
class Mosquitto:
    proc: Proc
    port: int       # plain TCP
    tls_port: int   # mutual TLS, like AWS IoT Core
    pki: Pki

    def stop(self) -> None:
        self.proc.stop()


class RecordSubscriber:
    """A QoS 1 subscriber over the broker's mutual-TLS port collecting every record of ``{"records": [...]}``
    payloads, as a cloud consumer would; ``received`` grows from paho's thread (read a ``list()`` copy), and
    ``bodies`` keeps each whole payload (its ``meta`` header too)."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str, timeout_s: float = 10) -> None:
        import json
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[dict[str, Any]] = []
        self.bodies: list[dict[str, Any]] = []
        ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self._client.tls_set(ca_certs=str(broker.pki.ca), certfile=str(broker.pki.client_cert),
                             keyfile=str(broker.pki.client_key))
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: ready.set()
        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            body = json.loads(msg.payload)
            self.bodies.append(body)
            self.received.extend(body["records"])

        self._client.on_message = on_message
        self._client.connect("127.0.0.1", broker.tls_port)
        self._client.loop_start()
        if not ready.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"no SUBACK for {topic} within {timeout_s} s")

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run scripts/setup.sh (make test does)")
    return found


def start_mosquitto(folder: Path, port: int | None = None, tls_port: int | None = None) -> Mosquitto:
    pki = make_pki(folder / "pki")
    port, tls_port = port or free_port(), tls_port or free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"""
user root
persistence false
log_dest stdout
per_listener_settings true
max_inflight_messages 0
max_queued_messages 100000
listener {port} 127.0.0.1
allow_anonymous true
listener {tls_port} 127.0.0.1
allow_anonymous true
cafile {pki.ca}
certfile {pki.server_cert}
keyfile {pki.server_key}
require_certificate true
use_identity_as_username true
""")
    proc = start([mosquitto_binary(), "-c", str(conf)], folder / "mosquitto.log")
    wait_for(lambda: port_open(port) and port_open(tls_port), 10, "mosquitto to listen")
    return Mosquitto(proc, port, tls_port, pki)
