"""OPC UA endpoint (asyncua server).

Address space (namespace ``urn:factoryedge:tep``): one folder per plant unit under Objects, each tag a Double
variable whose string node id is its path (``ns=2;s=Reactor/Pressure``) with ``EURange`` and ``EngineeringUnits``
properties; ``Simulator/...`` status variables; writable Boolean ``Disturbances/IDVnn`` switches; methods
``Simulator/SetDisturbance(n, on)``, ``Simulator/ClearDisturbances()`` and ``Simulator/Reset(seed)`` (seed < 0
keeps the current seed). After a trip every process value carries ``BadOutOfService``.

Process and status values are not copied into the address space at every plant step (at ``--speed 0`` that
copying cost more than the plant itself): a read asks the latest snapshot through a value callback, and only
nodes somebody monitors are written, so subscriptions see every change the endpoint writes (steps made while its
loop is busy are coalesced into the newest, as a server sampling its device would). Security:
:mod:`simulator.opcua_security`.

History (OPC UA Part 11): every process tag is historized (``Historizing`` true, ``AccessLevel`` HistoryRead):
each value the nodes take (the snapshots the endpoint writes, so exactly what subscribers are sent) is kept for
``history_s`` seconds, at most ``history_max_values`` per tag, in :mod:`simulator.opcua_history`, and served by
HistoryReadRawModified with continuation points. Status tags, disturbance switches and properties are not
historized (a history read of one is ``BadHistoryOperationUnsupported``). A trip is historized as
``BadOutOfService`` at the time it happened.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import ua as _ua
from asyncua.server.server import Server

from simulator.opcua_history import HistoryService, RingHistory, to_us
from simulator.opcua_security import APPLICATION_URI, ensure_certificate, setup_security
from simulator.plant import IDV_NUMBERS
from simulator.runtime import SimulationView, Snapshot
from simulator.tags import DISTURBANCE_FOLDER, FOLDERS, IDV_PATHS, PROCESS_TAGS, STATUS_FOLDER, STATUS_TAGS, Tag

__all__ = ["APPLICATION_URI", "NAMESPACE_URI", "OpcUaConfig", "OpcUaEndpoint", "ensure_certificate"]

NAMESPACE_URI = "urn:factoryedge:tep"
log = logging.getLogger(__name__)
# asyncua's NewType-based annotations (Int16, String, DateTime...) reject the plain ints, strings and datetimes
# its own runtime accepts everywhere; the tests exercise this module against a real client instead.
ua: Any = _ua

_UNECE = {"kPa": "KPA", "°C": "CEL", "%": "P1", "kg/h": "E93", "m³/h": "MQH", "kW": "KWT"}
_VARIANT = {"float": ua.VariantType.Double, "int": ua.VariantType.Int64, "str": ua.VariantType.String,
            "bool": ua.VariantType.Boolean}
_BAD_CODE = ua.StatusCodes.BadOutOfService
_BAD = ua.StatusCode(_BAD_CODE)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)
_N_PROCESS = len(PROCESS_TAGS)

#: Status values from a snapshot, in STATUS_TAGS order.
_STATUS_VALUES: dict[str, Callable[[Snapshot], Any]] = {
    "SimulatedTime": lambda s: s.t_s,
    "Seed": lambda s: s.seed,
    "ActiveDisturbances": lambda s: s.idv_text,
    "Shutdown": lambda s: s.shutdown,
    "ShutdownReason": lambda s: s.shutdown_reason or "",
}


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
        security: ``"none"``, ``"sign"``, ``"encrypt"`` (Basic256Sha256 SignAndEncrypt) or ``"all"`` (the three).
        cert_dir: where the generated self-signed server certificate lives (needed unless security is ``"none"``).
        trust_dir: folder of trusted client certificates; None accepts any client certificate.
        history_s: how long each process tag's history keeps a value (seconds); 0 historizes nothing.
        history_max_values: the most values kept per tag whatever their age (20 bytes each): bounds memory at
            fast ``--speed`` (53 tags x 36,000 = 38 MB).
    """

    host: str = "127.0.0.1"
    port: int = 4840
    security: str = "none"
    cert_dir: Path | None = None
    trust_dir: Path | None = None
    history_s: float = 3600.0
    history_max_values: int = 36_000

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"


class OpcUaEndpoint:
    """Serves a simulation over OPC UA.

    Value nodes are indexed 0..52 (process tags in PROCESS_TAGS order) then the status tags in STATUS_TAGS order;
    a read builds a node's DataValue from the latest snapshot, at most once per snapshot.
    """

    name = "opcua"

    def __init__(self, sim: SimulationView, config: OpcUaConfig) -> None:
        self.sim = sim
        self.config = config
        self.server = Server()
        self.ns = 0
        self._dirty = asyncio.Event()
        self._publishing = asyncio.Lock()  # the write loop and published(): one snapshot written at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._value_ids: list[ua.NodeId] = []  # process tags, then status tags
        self._value_attrs: list[Any] = []  # their Value AttributeValue: who monitors them
        self._idv_ids: list[ua.NodeId] = []
        self._cache_seq = -1
        self._cache: dict[int, ua.DataValue] = {}
        self._cache_now = datetime.now(timezone.utc)
        self._written: Snapshot | None = None  # the snapshot last pushed to monitored nodes
        self._idvs_written: frozenset[int] | None = None
        self.history: RingHistory | None = None
        if config.history_s > 0:
            self.history = RingHistory(config.history_s, config.history_max_values)
            self.server.iserver.history_manager = HistoryService(self.server.iserver, self.history)
        self._historized: Snapshot | None = None  # the snapshot last recorded in the history
        self._history_lock = threading.Lock()  # record() may be called from any thread (RingHistory is shared)

    async def start(self) -> None:
        """Build the address space and start listening."""
        self._loop = asyncio.get_running_loop()
        server = self.server
        await server.init()
        server.set_endpoint(self.config.url)
        server.set_server_name("factory-edge-gateway TEP simulator")
        server.allow_remote_admin(False)  # nobody may write read-only tags by logging in as "admin"
        await server.set_application_uri(APPLICATION_URI)
        await setup_security(server, self.config.security, self.config.host, self.config.cert_dir,
                             self.config.trust_dir)
        self.ns = await server.register_namespace(NAMESPACE_URI)
        await self._build()
        self._record(self.sim.snapshot)
        self.sim.add_listener(self._on_change)
        await server.start()
        await self._write_idvs(self.sim.snapshot)
        self._writer = asyncio.create_task(self._write_loop(), name="opcua-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await self.server.stop()

    async def _build(self) -> None:
        ns, objects = self.ns, self.server.nodes.objects
        folders = {name: await objects.add_folder(ua.NodeId(name, ns), ua.QualifiedName(name, ns)) for name in FOLDERS}
        for tag in PROCESS_TAGS:
            self._value_ids.append(await self._add_tag(folders[tag.folder], tag))
        for path, kind, _description in STATUS_TAGS:
            name = path.split("/", 1)[1]
            node = await folders[STATUS_FOLDER].add_variable(
                ua.NodeId(path, ns), ua.QualifiedName(name, ns), _STATUS_VALUES[name](self.sim.snapshot),
                _VARIANT[kind],
            )
            self._value_ids.append(node.nodeid)
        await self._historize()
        aspace = self.server.iserver.aspace
        for index, node_id in enumerate(self._value_ids):
            self.server.set_attribute_value_callback(node_id, self._reader(index))
            # A setter keeps asyncua from dropping the callback when we push a value to subscribers.
            self.server.set_attribute_value_setter(node_id, _keep_callback)
            self._value_attrs.append(aspace[node_id].attributes[ua.AttributeIds.Value])
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
            _checked(self._m_set_disturbance, "int", "bool"), [ua.VariantType.Int32, ua.VariantType.Boolean], [],
        )
        await status.add_method(
            ua.NodeId(f"{STATUS_FOLDER}/ClearDisturbances", ns), ua.QualifiedName("ClearDisturbances", ns),
            _checked(self._m_clear), [], [],
        )
        await status.add_method(
            ua.NodeId(f"{STATUS_FOLDER}/Reset", ns), ua.QualifiedName("Reset", ns),
            _checked(self._m_reset, "int"), [ua.VariantType.Int64], [],
        )

    async def _historize(self) -> None:
        """Mark the process tags historized and start their histories; announce the capability."""
        if self.history is None:
            return
        for node_id in self._value_ids[:_N_PROCESS]:
            node = self.server.get_node(node_id)
            await node.write_attribute(ua.AttributeIds.Historizing, ua.DataValue(True))
            for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                await node.set_attr_bit(attr, ua.AccessLevel.HistoryRead)
            await self.history.new_historized_node(node_id, None)
        capabilities = {ua.ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability: True,
                        ua.ObjectIds.HistoryServerCapabilities_MaxReturnDataValues: ua.Variant(
                            self.history.max_history_data_response_size, ua.VariantType.UInt32)}
        for object_id, value in capabilities.items():
            await self.server.write_attribute_value(ua.NodeId(object_id), ua.DataValue(value))

    def _record(self, snap: Snapshot) -> None:
        """Historize the values of ``snap`` the nodes take now: those that differ from the last recorded snapshot's
        (all of them when the plant trips or restarts).

        Called with the snapshot the endpoint writes to its nodes, not with every step: under load the write loop
        coalesces steps, and a value no node ever held would be history no subscriber could have been sent (asyncua's
        own historizing records a node's values through an internal subscription, with the same effect). A changed
        timestamp alone is no new value either: the subscriptions' default trigger (StatusValue) does not report it.
        """
        history = self.history
        if history is None:
            return
        with self._history_lock:
            last = self._historized
            if last is not None and snap.seq <= last.seq:
                return
            self._historized = snap
            status = _BAD_CODE if snap.shutdown else 0
            every = last is None or last.shutdown != snap.shutdown
            ids, values, old = self._value_ids, snap.values, None if last is None else last.values
            micros: dict[int, int] = {}  # the values that changed in one step share one stamp: convert it once
            rows = []
            for index, stamp in enumerate(snap.stamps):
                if not every and old is not None and values[index] == old[index]:
                    continue
                us = micros.get(id(stamp))
                if us is None:
                    us = micros[id(stamp)] = to_us(stamp)
                rows.append((ids[index], us, None if status else values[index], status))
            history.record_many(rows)

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

    # ------------------------------------------------------------ values
    def _reader(self, index: int) -> Callable[[ua.NodeId, ua.AttributeIds], ua.DataValue]:
        def read(_node_id: ua.NodeId, _attr: ua.AttributeIds) -> ua.DataValue:
            return self._value(index, self.sim.snapshot)

        return read

    def _value(self, index: int, snap: Snapshot) -> ua.DataValue:
        """DataValue of value node ``index`` in ``snap``, built once per snapshot."""
        if snap.seq != self._cache_seq:
            self._cache.clear()
            self._cache_seq = snap.seq
            self._cache_now = datetime.now(timezone.utc)
        dv = self._cache.get(index)
        if dv is None:
            dv = self._cache[index] = self._make(index, snap, self._cache_now)
        return dv

    @staticmethod
    def _make(index: int, snap: Snapshot, now: datetime) -> ua.DataValue:
        if index < _N_PROCESS:
            if snap.shutdown:
                return ua.DataValue(None, _BAD, snap.stamps[index], now)
            return ua.DataValue(ua.Variant(snap.values[index], ua.VariantType.Double), _GOOD, snap.stamps[index], now)
        path, kind, _description = STATUS_TAGS[index - _N_PROCESS]
        value = _STATUS_VALUES[path.split("/", 1)[1]](snap)
        return ua.DataValue(ua.Variant(value, _VARIANT[kind]), _GOOD, now, now)

    def _on_change(self, snap: Snapshot) -> None:
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
            await self.published()

    async def published(self) -> None:
        """Write the newest snapshot to the history and the nodes, as the write loop does after every change (a test
        that steps the plant calls it to have each step written)."""
        async with self._publishing:
            self._dirty.clear()
            snap = self.sim.snapshot
            self._record(snap)
            await self._write_idvs(snap)
            await self._push_monitored(snap)

    async def _write_idvs(self, snap: Snapshot) -> None:
        """Disturbance switches are plain writable nodes: written when the active set changes (rarely)."""
        if self._idvs_written == snap.active_idvs:
            return
        now = datetime.now(timezone.utc)
        for n, node_id in zip(IDV_NUMBERS, self._idv_ids, strict=True):
            dv = ua.DataValue(ua.Variant(n in snap.active_idvs, ua.VariantType.Boolean), _GOOD, now, now)
            await self.server.write_attribute_value(node_id, dv)
        self._idvs_written = snap.active_idvs

    async def _push_monitored(self, snap: Snapshot) -> None:
        """Hand monitored nodes whose value changed since the last push to their subscriptions."""
        last, write = self._written, self.server.write_attribute_value
        self._written = snap
        state_changed = last is None or last.shutdown != snap.shutdown
        for index, attr in enumerate(self._value_attrs):
            if not attr.datachange_callbacks:
                continue
            if index < _N_PROCESS and not state_changed and last is not None and (
                    snap.values[index] == last.values[index]):
                continue
            await write(self._value_ids[index], self._value(index, snap))

    # ------------------------------------------------------------ control
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


_INTEGERS = frozenset({ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
                       ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64})
_KINDS = {"int": _INTEGERS, "bool": frozenset({ua.VariantType.Boolean})}


def _checked(handler: Callable[..., Any], *kinds: str) -> Callable[..., Any]:
    """Wrap a method handler so wrong argument counts or types get their status code, not BadUnexpectedError.

    Any integer width is accepted where an integer is expected: clients rarely bother to send exactly Int32.
    """

    async def method(parent: ua.NodeId, *args: Any) -> Any:
        if len(args) < len(kinds):
            return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing)
        if len(args) > len(kinds):
            return ua.StatusCode(ua.StatusCodes.BadTooManyArguments)
        for arg, kind in zip(args, kinds, strict=True):
            if getattr(arg, "VariantType", None) not in _KINDS[kind] or getattr(arg, "is_array", False):
                return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        return await handler(parent, *args)

    return method


def _keep_callback(node: Any, attr: Any, value: Any) -> None:
    """Value setter of callback-backed nodes: the value lives in the snapshot, nothing to store."""
