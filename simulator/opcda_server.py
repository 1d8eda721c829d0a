"""OPC DA endpoint: a Pyro4 daemon speaking the OpenOPC Gateway Service interface.

The unmodified ``OpenOPC.open_client(host, port)`` works against it: object ``opc`` hands out a per-client object
whose ``read``/``write``/``list``/``properties``/``info``/``servers``/``ping``/``close`` return what the real
gateway returns (quality strings, ``str(datetime)`` timestamps, ``Error`` quality with value and timestamp None
for unknown items). Item ids are tag paths with dots: ``Reactor.Pressure``, ``Disturbances.IDV06``; the items,
their values, browsing and properties are :mod:`simulator.opcda_items`.

Two things real gateways vary in are selectable, so clients can be tested against both: the timestamp text (modern
pywin32 ``2024-05-01 10:00:00.123000+00:00`` or old pywin32 ``05/01/24 10:00:00``, UTC) and the host written into
the per-client proxies (``report_host="0.0.0.0"`` reproduces a gateway bound to all interfaces while listening on
127.0.0.1 only). Named groups behave as in OpenOPC: the first read with a group name fixes its items; later reads
of that group ignore the tags passed unless ``rebuild=True``.

Pyro has no authentication: the daemon warns at start unless TLS is configured (certificates given, or generated
into ``tls_dir``: a CA, a server certificate for localhost/127.0.0.1 and a client certificate for mutual TLS).
Only serpent is accepted (pickle, marshal and the others can run code or build objects chosen by the peer while
decoding). With ``hmac_key_file`` every message must carry Pyro's HMAC signature made with that key, as with a
gateway service configured with a key.
"""

from __future__ import annotations

import builtins
import datetime as dt
import ipaddress
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import Pyro4

from simulator.opcda_items import (
    ALL_ITEMS,
    IDV_IDS,
    PROCESS_INDEX,
    STATUS_IDS,
    TimeFormat,
    browse,
    format_stamp,
    item_properties,
    item_value,
)
from simulator.runtime import Simulation

log = logging.getLogger(__name__)

SERVER_NAME = "FactoryEdge.TEP.1"
_SAFE_SERIALIZERS = {"serpent"}
_OK = "The operation completed successfully."
_UNKNOWN_ITEM = "The item ID is not defined in the server address space."
_READ_ONLY = "The item's access rights do not allow the operation."
_BAD_VALUE = "The value could not be converted to the item's type."
_START = datetime.now(timezone.utc)


def _opc_error(text: str) -> Exception:
    """The exception the real gateway raises (OpenOPC.OPCError), or RuntimeError if OpenOPC is missing."""
    try:
        from OpenOPC import OPCError

        return OPCError(text)  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover
        return RuntimeError(text)


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "0", "true", "false", "on", "off"):
        return value.strip().lower() in ("1", "true", "on")
    return None


@Pyro4.expose
class DaClient:
    """One OpenOPC client session (what ``OpenOPC.client`` is inside the real gateway)."""

    def __init__(self, gateway: OpcGateway) -> None:
        self._gateway = gateway
        self._sim = gateway.sim
        self._guid = str(uuid.uuid4())
        self._groups: dict[str, list[str]] = {}
        self.opc_server: str | None = None
        self.opc_host: str | None = None

    def GUID(self) -> str:
        return self._guid

    def connect(self, opc_server: str | None = None, opc_host: str = "localhost") -> None:
        names = (opc_server or SERVER_NAME).split(";")
        if SERVER_NAME not in names:
            raise _opc_error("Connect: Cannot connect to any of the servers in the OPC_SERVER list")
        self.opc_server, self.opc_host = SERVER_NAME, opc_host

    def close(self, del_object: bool = True) -> None:
        self._groups.clear()
        if del_object:
            self._gateway.release_client(self)

    def read(self, tags: Any = None, group: str | None = None, size: Any = None, pause: Any = 0,
             source: str = "hybrid", update: Any = -1, timeout: Any = 5000, sync: bool = False,
             include_error: bool = False, rebuild: bool = False) -> Any:
        single = isinstance(tags, str)
        names: list[str] = [tags] if single else list(tags or [])
        if any(not isinstance(t, str) for t in names):
            raise TypeError("read(): 'tags' parameter must be a string or a list of strings")
        if group is not None:  # as OpenOPC: an existing group keeps its items unless rebuilt
            if group in self._groups and not rebuild:
                names = self._groups[group]
            else:
                self._groups[group] = names
        snap = self._sim.snapshot
        time_format = self._gateway.time_format
        rows: list[tuple[Any, ...]] = []
        for tag in names:
            found = item_value(snap, tag, time_format)
            value, quality, stamp = found if found is not None else (None, "Error", None)
            error = _OK if found is not None else _UNKNOWN_ITEM
            row: tuple[Any, ...] = (value, quality, stamp, error) if include_error else (value, quality, stamp)
            rows.append(row if single else (tag, *row))
        return rows[0] if single else rows

    def write(self, tag_value_pairs: Any, size: Any = None, pause: Any = 0, include_error: bool = False) -> Any:
        single = not isinstance(tag_value_pairs[0], (list, tuple))
        pairs = [tag_value_pairs] if single else list(tag_value_pairs)
        out: list[Any] = []
        for pair in pairs:
            if not isinstance(pair, (list, tuple)) or len(pair) < 2 or not isinstance(pair[0], str):
                raise TypeError("write(): 'tag_value_pairs' parameter must be a (tag, value) tuple or a list of "
                                "(tag,value) tuples")
            tag, value = pair[0], pair[1]
            error = self._write_one(tag, value)
            status = "Error" if error else "Success"
            if single:
                out.append((status, error or _OK) if include_error else status)
            else:
                out.append((tag, status, error or _OK) if include_error else (tag, status))
        return out[0] if single else out

    def _write_one(self, tag: str, value: Any) -> str | None:
        if tag in IDV_IDS:
            on = _to_bool(value)
            if on is None:
                return _BAD_VALUE
            self._sim.set_idv(IDV_IDS[tag], on)
            return None
        if tag in PROCESS_INDEX or tag in STATUS_IDS:
            return _READ_ONLY
        return _UNKNOWN_ITEM

    def groups(self) -> list[str]:
        return list(self._groups)

    def remove(self, groups: Any) -> None:
        for group in [groups] if isinstance(groups, str) else list(groups):
            self._groups.pop(group, None)

    def list(self, paths: Any = "*", recursive: bool = False, flat: bool = False,
             include_type: bool = False) -> list[Any]:
        patterns = [paths] if isinstance(paths, str) else list(paths or ["*"])
        seen: dict[Any, None] = {}
        for path in patterns:
            for node in browse(path, recursive, flat):
                seen.setdefault((node, "Leaf" if node in ALL_ITEMS else "Branch") if include_type else node)
        return list(seen)

    def properties(self, tags: Any, id: Any = None) -> Any:
        single_tag = isinstance(tags, str)
        names = [tags] if single_tag else list(tags)
        ids = list(id) if isinstance(id, (list, tuple)) else ([] if id is None else [id])
        include_name = 0 in ids
        ids = [i for i in ids if i != 0]
        out: list[Any] = []
        for tag in names:
            props = item_properties(self._sim.snapshot, tag, self._gateway.time_format)
            if props is None:
                raise _opc_error(f"properties: {_UNKNOWN_ITEM} ({tag})")
            if id is None:
                rows: list[Any] = [(0, "Item ID (virtual property)", tag), *props]
            elif not isinstance(id, (list, tuple)):
                rows = [p[2] for p in props if p[0] == id]
            else:
                rows = [(p[0], p[2]) for p in props if p[0] in ids]
            if include_name:
                rows.insert(0, (0, tag))
            out.extend(rows if single_tag else [(tag, *(r if isinstance(r, tuple) else (r,))) for r in rows])
        single = single_tag and id is not None and not isinstance(id, (list, tuple))
        return out[0] if single and out else out

    def info(self) -> builtins.list[tuple[str, str]]:
        fmt = self._gateway.time_format
        return [
            ("Protocol", "DCOM"), ("Class", "Graybox.OPC.DAWrapper"), ("Client Name", "OpenOPC"),
            ("OPC Host", self.opc_host or "localhost"), ("OPC Server", SERVER_NAME), ("State", "Running"),
            ("Version", "1.0 (Build 1)"), ("Browser", "Hierarchical"), ("Start Time", format_stamp(_START, fmt)),
            ("Current Time", format_stamp(datetime.now(timezone.utc), fmt)),
            ("Vendor", "factory-edge-gateway TEP simulator"),
        ]

    def servers(self, opc_host: str = "localhost") -> builtins.list[str]:
        return [SERVER_NAME]

    def ping(self) -> bool:
        return True


@Pyro4.expose
class OpcGateway:
    """The ``opc`` object of the OpenOPC Gateway Service."""

    def __init__(self, sim: Simulation, time_format: TimeFormat = "modern") -> None:
        self.sim = sim
        self.time_format: TimeFormat = time_format
        self._clients: dict[str, DaClient] = {}
        self._lock = threading.Lock()

    def create_client(self) -> DaClient:
        client = DaClient(self)
        self._pyroDaemon.register(client)  # type: ignore[attr-defined]  # set by Pyro on registered objects
        with self._lock:
            self._clients[client.GUID()] = client
        return client

    def release_client(self, client: Any) -> None:
        guid = client.GUID()
        with self._lock:
            local = self._clients.pop(guid, None)
        if local is not None:
            self._pyroDaemon.unregister(local)  # type: ignore[attr-defined]

    def get_clients(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(guid, c.opc_host or "") for guid, c in self._clients.items()]


@dataclass
class OpcDaConfig:
    """Where the OPC DA gateway listens and how it answers.

    Attributes:
        host: interface to bind.
        port: TCP port (7766, the OpenOPC gateway's).
        advertise_host: host name put into the proxies handed to clients when binding all interfaces.
        tls_cert: server certificate (PEM) enabling TLS through Pyro's SSL settings.
        tls_key: its private key.
        tls_ca: CA bundle; when set, clients must present a certificate it signed (mutual TLS).
        time_format: ``modern`` or ``legacy`` pywin32 timestamp text (see the module docstring).
        report_host: host put into the per-client proxies whatever the bound interface; ``0.0.0.0`` reproduces a
            real gateway bound to all interfaces (clients must rewrite it).
        tls_dir: generate a CA, server and client certificates here (once) and serve mutual TLS with them, unless
            ``tls_cert`` is given.
        hmac_key_file: file whose text (stripped) is the Pyro HMAC key every message must be signed with.
    """

    host: str = "127.0.0.1"
    port: int = 7766
    advertise_host: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    time_format: TimeFormat = "modern"
    report_host: str | None = None
    tls_dir: Path | None = None
    hmac_key_file: Path | None = None


def ensure_tls_files(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """Generate (once) ``ca.pem``, ``server.pem``/``server.key`` and ``client.pem``/``client.key`` in ``folder``.

    The server certificate names localhost, 127.0.0.1 and ``host``: Python's TLS client checks the host name. The
    CA key is not kept: these certificates are for test benches. Returns ``(server cert, server key, CA)``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = {f: folder / f for f in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    if all(p.exists() for p in names.values()):
        return names["server.pem"], names["server.key"], names["ca.pem"]
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)

    def build(cn: str, key: Any, issuer: Any, sign_key: Any, ca: bool, sans: list[x509.GeneralName]) -> Any:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEP simulator OPC DA test CA")])
    ca = build("TEP simulator OPC DA test CA", ca_key, ca_name, ca_key, True, [])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if host not in ("localhost", "127.0.0.1", "0.0.0.0", "::", ""):
        sans.append(x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() else x509.DNSName(host))
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for role, role_sans in (("server", sans), ("client", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{role}.pem"] = build(f"tep-simulator-{role}", key, ca_name, ca_key, False, role_sans).public_bytes(
            serialization.Encoding.PEM)
        files[f"{role}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    for name, data in files.items():
        names[name].write_bytes(data)
        names[name].chmod(0o600)
    return names["server.pem"], names["server.key"], names["ca.pem"]


class OpcDaEndpoint:
    """Runs the Pyro4 daemon in a background thread."""

    name = "opcda"

    def __init__(self, sim: Simulation, config: OpcDaConfig) -> None:
        self.sim = sim
        self.config = config
        self.daemon: Any = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        cfg = self.config
        config = Pyro4.config
        config.SERIALIZERS_ACCEPTED = set(_SAFE_SERIALIZERS)  # never pickle: it would execute code sent by clients
        if cfg.tls_cert is None and cfg.tls_dir is not None:
            cfg.tls_cert, cfg.tls_key, cfg.tls_ca = ensure_tls_files(cfg.tls_dir, cfg.host)
            log.info("OPC DA gateway: mutual TLS with certificates in %s (clients use ca.pem, client.pem, "
                     "client.key)", cfg.tls_dir)
        if cfg.tls_cert is not None:
            config.SSL = True
            config.SSL_SERVERCERT = str(cfg.tls_cert)
            config.SSL_SERVERKEY = str(cfg.tls_key or "")
            if cfg.tls_ca is not None:
                config.SSL_REQUIRECLIENTCERT = True
                config.SSL_CACERTS = str(cfg.tls_ca)
        if not config.SSL:
            log.warning("OPC DA gateway on %s:%d has NO authentication and NO encryption (Pyro has none); pass "
                        "--opcda-tls-dir, or --opcda-tls-cert/--opcda-tls-key (and --opcda-tls-ca), outside a "
                        "test bench", cfg.host, cfg.port)
        bound_all = cfg.host in ("0.0.0.0", "::", "")
        nathost = cfg.report_host or (cfg.advertise_host if bound_all else None)
        self.daemon = Pyro4.Daemon(host=cfg.host, port=cfg.port, nathost=nathost,
                                   natport=0 if nathost else None)
        if cfg.hmac_key_file is not None:
            self.daemon._pyroHmacKey = cfg.hmac_key_file.read_text().strip().encode()
        self.daemon.register(OpcGateway(self.sim, cfg.time_format), "opc")
        self._thread = threading.Thread(target=self.daemon.requestLoop, name="opcda-daemon", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.daemon is not None:
            self.daemon.close()
