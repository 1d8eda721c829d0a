"""OPC UA endpoint (asyncua server).

Address space (namespace ``urn:factoryedge:tep``): one folder per plant unit under Objects, each tag a Double
variable whose string node id is its path (``ns=2;s=Reactor/Pressure``) with ``EURange`` and ``EngineeringUnits``
properties; ``Simulator/...`` status variables; writable Boolean ``Disturbances/IDVnn`` switches; methods
``Simulator/SetDisturbance(n, on)``, ``Simulator/ClearDisturbances()`` and ``Simulator/Reset(seed)`` (seed < 0
keeps the current seed). After a trip every process value carries ``BadOutOfService``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import ua as _ua
from asyncua.server.server import Server

from simulator.plant import IDV_NUMBERS
from simulator.runtime import Simulation, Snapshot
from simulator.tags import DISTURBANCE_FOLDER, FOLDERS, IDV_PATHS, PROCESS_TAGS, STATUS_FOLDER, STATUS_TAGS, Tag

NAMESPACE_URI = "urn:factoryedge:tep"
APPLICATION_URI = "urn:factoryedge:tep:simulator"
log = logging.getLogger(__name__)
# asyncua's NewType-based annotations (Int16, String, DateTime...) reject the plain ints, strings and datetimes
# its own runtime accepts everywhere; the tests exercise this module against a real client instead.
ua: Any = _ua

_UNECE = {"kPa": "KPA", "°C": "CEL", "%": "P1", "kg/h": "E93", "m³/h": "MQH", "kW": "KWT"}
_VARIANT = {"float": ua.VariantType.Double, "int": ua.VariantType.Int64, "str": ua.VariantType.String,
            "bool": ua.VariantType.Boolean}
_BAD = ua.StatusCode(ua.StatusCodes.BadOutOfService)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)


def engineering_units(unit: str) -> ua.EUInformation:
    """EUInformation for ``unit``; UnitId per the UNECE common code, -1 where none exists (kscmh, mol%)."""
    code = _UNECE.get(unit)
    unit_id = -1
    if code:
        unit_id = 0
        for char in code:
            unit_id = (unit_id << 8) | ord(char)
    return ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


@dataclass
class OpcUaConfig:
    """Where and how the OPC UA endpoint listens.

    Attributes:
        host: interface to bind.
        port: TCP port (4840 by default).
        security: ``"none"``, ``"sign"``, ``"encrypt"`` (Basic256Sha256 SignAndEncrypt) or ``"all"``.
        cert_dir: where generated self-signed certificates live (needed unless security is ``"none"``).
    """

    host: str = "127.0.0.1"
    port: int = 4840
    security: str = "none"
    cert_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"


class OpcUaEndpoint:
    """Serves a :class:`Simulation` over OPC UA; values are written whenever the simulation changes."""

    name = "opcua"

    def __init__(self, sim: Simulation, config: OpcUaConfig) -> None:
        self.sim = sim
        self.config = config
        self.server = Server()
        self.ns = 0
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._last: Snapshot | None = None
        self._value_ids: list[ua.NodeId] = []
        self._status_ids: dict[str, ua.NodeId] = {}
        self._idv_ids: list[ua.NodeId] = []

    async def start(self) -> None:
        """Build the address space and start listening."""
        self._loop = asyncio.get_running_loop()
        server = self.server
        await server.init()
        server.set_endpoint(self.config.url)
        server.set_server_name("factory-edge-gateway TEP simulator")
        server.allow_remote_admin(False)  # nobody may write read-only tags by logging in as "admin"
        await server.set_application_uri(APPLICATION_URI)
        await self._setup_security()
        self.ns = await server.register_namespace(NAMESPACE_URI)
        await self._build()
        self.sim.add_listener(self._on_change)
        await server.start()
        await self._write(self.sim.snapshot)
        self._writer = asyncio.create_task(self._write_loop(), name="opcua-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await self.server.stop()

    async def _setup_security(self) -> None:
        mode = self.config.security
        policies = {
            "none": [ua.SecurityPolicyType.NoSecurity],
            "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign],
            "encrypt": [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
            "all": [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
        }
        if mode not in policies:
            raise ValueError(f"OPC UA security {mode!r} unknown: use none, sign, encrypt or all")
        self.server.set_security_policy(policies[mode])
        if mode == "none":
            return
        cert_file, key_file = await ensure_certificate(self.config.cert_dir, self.config.host)
        await self.server.load_certificate(str(cert_file))
        await self.server.load_private_key(str(key_file))

    async def _build(self) -> None:
        ns, objects = self.ns, self.server.nodes.objects
        folders = {name: await objects.add_folder(ua.NodeId(name, ns), ua.QualifiedName(name, ns)) for name in FOLDERS}
        for tag in PROCESS_TAGS:
            self._value_ids.append(await self._add_tag(folders[tag.folder], tag))
        for path, kind, _description in STATUS_TAGS:
            name = path.split("/", 1)[1]
            initial: Any = {"float": 0.0, "int": 0, "str": "", "bool": False}[kind]
            node = await folders[STATUS_FOLDER].add_variable(
                ua.NodeId(path, ns), ua.QualifiedName(name, ns), initial, _VARIANT[kind]
            )
            self._status_ids[name] = node.nodeid
        for n, path in zip(IDV_NUMBERS, IDV_PATHS, strict=True):
            node = await folders[DISTURBANCE_FOLDER].add_variable(
                ua.NodeId(path, ns), ua.QualifiedName(path.split("/", 1)[1], ns), False, ua.VariantType.Boolean
            )
            await node.set_writable()
            self.server.set_attribute_value_setter(node.nodeid, self._idv_setter(n))
            self._idv_ids.append(node.nodeid)
        status = folders[STATUS_FOLDER]
        await status.add_method(
            ua.NodeId(f"{STATUS_FOLDER}/SetDisturbance", ns), ua.QualifiedName("SetDisturbance", ns),
            self._m_set_disturbance, [ua.VariantType.Int32, ua.VariantType.Boolean], [],
        )
        await status.add_method(
            ua.NodeId(f"{STATUS_FOLDER}/ClearDisturbances", ns), ua.QualifiedName("ClearDisturbances", ns),
            self._m_clear, [], [],
        )
        await status.add_method(
            ua.NodeId(f"{STATUS_FOLDER}/Reset", ns), ua.QualifiedName("Reset", ns),
            self._m_reset, [ua.VariantType.Int64], [],
        )

    async def _add_tag(self, folder: Any, tag: Tag) -> ua.NodeId:
        ns = self.ns
        node = await folder.add_variable(
            ua.NodeId(tag.path, ns), ua.QualifiedName(tag.name, ns), 0.0, ua.VariantType.Double
        )
        await node.add_property(
            ua.NodeId(f"{tag.path}/EURange", ns), "EURange", ua.Range(Low=tag.low, High=tag.high),
            datatype=ua.NodeId(ua.ObjectIds.Range),
        )
        await node.add_property(
            ua.NodeId(f"{tag.path}/EngineeringUnits", ns), "EngineeringUnits", engineering_units(tag.unit),
            datatype=ua.NodeId(ua.ObjectIds.EUInformation),
        )
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
            ua.LocalizedText(f"{tag.description} [{tag.kind.upper()} {tag.number}]"))))
        return node.nodeid  # type: ignore[no-any-return]

    def _idv_setter(self, n: int) -> Any:
        def setter(node: Any, attr: ua.AttributeIds, value: ua.DataValue) -> None:
            node.attributes[attr].value = value
            wanted = bool(value.Value.Value) if value.Value is not None else False
            if wanted != (n in self.sim.snapshot.active_idvs):
                self.sim.set_idv(n, wanted)

        return setter

    async def _m_set_disturbance(self, _parent: ua.NodeId, n: ua.Variant, on: ua.Variant) -> Any:
        try:
            self.sim.set_idv(int(n.Value), bool(on.Value))
        except ValueError as exc:
            log.info("OPC UA SetDisturbance refused: %s", exc)
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        return []

    async def _m_clear(self, _parent: ua.NodeId) -> Any:
        self.sim.clear_idvs()
        return []

    async def _m_reset(self, _parent: ua.NodeId, seed: ua.Variant) -> Any:
        value = int(seed.Value)
        self.sim.reset(None if value < 0 else value)
        return []

    def _on_change(self, _snap: Snapshot) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._dirty.set()
        else:
            loop.call_soon_threadsafe(self._dirty.set)

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write(self.sim.snapshot)

    async def _write(self, snap: Snapshot) -> None:
        """Write what changed since the last write; SimulatedTime last, so a reader that sees it sees the rest."""
        last, write = self._last, self.server.write_attribute_value
        now = datetime.now(timezone.utc)
        status = _BAD if snap.shutdown else _GOOD
        state_changed = last is None or last.shutdown != snap.shutdown
        for i, node_id in enumerate(self._value_ids):
            value = snap.values[i]
            if state_changed or last is None or value != last.values[i]:
                variant = None if snap.shutdown else ua.Variant(value, ua.VariantType.Double)
                await write(node_id, ua.DataValue(variant, status, snap.stamps[i], now))
        if last is None or last.active_idvs != snap.active_idvs:
            for n, node_id in zip(IDV_NUMBERS, self._idv_ids, strict=True):
                await write(node_id, _dv(n in snap.active_idvs, ua.VariantType.Boolean, now))
            await write(self._status_ids["ActiveDisturbances"], _dv(snap.idv_text, ua.VariantType.String, now))
        if state_changed or last is None or last.shutdown_reason != snap.shutdown_reason:
            await write(self._status_ids["Shutdown"], _dv(snap.shutdown, ua.VariantType.Boolean, now))
            await write(self._status_ids["ShutdownReason"],
                        _dv(snap.shutdown_reason or "", ua.VariantType.String, now))
        if last is None or last.seed != snap.seed:
            await write(self._status_ids["Seed"], _dv(snap.seed, ua.VariantType.Int64, now))
        await write(self._status_ids["SimulatedTime"], _dv(snap.t_s, ua.VariantType.Double, now))
        self._last = snap


def _dv(value: Any, vtype: ua.VariantType, now: datetime) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype), _GOOD, now, now)


async def ensure_certificate(cert_dir: Path | None, host: str) -> tuple[Path, Path]:
    """Generate (once) a self-signed server certificate whose application URI matches the server's."""
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
    return cert_file, key_file
