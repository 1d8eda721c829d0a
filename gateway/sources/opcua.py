"""OPC UA collector connection (asyncua): subscription or polling.

After every (re)connect the namespace index and the node ids are resolved again and the monitored items are
created again: servers renumber namespaces after restarts, and a subscription that is not rebuilt is the classic
"connected but no data". One subscription per session (asyncua keeps one publish request in flight per session,
NOTES 4), monitored items created in batches. A watchdog compares what the subscription delivered with what a read
returns; a subscription that went silent while values moved is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError
from pydantic import Field

from gateway.errors import SourceError
from gateway.record import Quality, Value
from gateway.sources.common import ConnectionBase, Emitter

log = logging.getLogger(__name__)

BATCH = 1000  # monitored items created per CreateMonitoredItems call


class OpcUaConnection(ConnectionBase):
    """One OPC UA server."""

    type: Literal["opcua"] = Field(default="opcua", description="Connection type.")
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="Server endpoint, e.g. opc.tcp://10.0.0.5:4840.")
    namespace_uri: str | None = Field(
        default=None,
        description="Namespace URI for node ids written without ns= (e.g. 's=Reactor/Pressure'); resolved to an "
        "index after every connect, because servers renumber namespaces.",
    )
    nodes: list[str] = Field(
        min_length=1,
        description="Node ids: 'ns=2;s=Tag', 'nsu=urn:x;s=Tag', or 's=Tag' / 'i=1001' with namespace_uri.",
    )
    mode: Literal["subscription", "polling"] = Field(
        default="subscription", description="subscription (report by exception) or polling (read every scan)."
    )
    publishing_interval_ms: float = Field(default=1000, gt=0, description="Subscription publishing interval.")
    sampling_interval_ms: float = Field(default=0, ge=0, description="Server sampling interval (0: fastest).")
    scan_interval_s: float = Field(default=1.0, gt=0, description="Polling interval in polling mode.")
    watchdog_s: float = Field(
        default=30.0, gt=0, description="Check a quiet subscription against a read this often; rebuild if silent."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Request timeout.")


def _quality(dv: ua.DataValue) -> Quality:
    sc = dv.StatusCode
    if sc is None or sc.is_good():
        return Quality.GOOD
    return Quality.UNCERTAIN if sc.is_uncertain() else Quality.BAD


def _ts_ns(dt: datetime | None) -> int | None:
    return int(dt.timestamp() * 1e9) if dt is not None else None


def _value(raw: Any) -> tuple[Value, bool]:
    if raw is None or isinstance(raw, bool | int | float | str):
        return raw, True
    if isinstance(raw, datetime):
        return raw.isoformat(), True
    return None, False


def tag_of(node_id: str) -> str:
    """The source tag name of a node id: its identifier without namespace, e.g. 'Reactor/Pressure'."""
    ident = node_id.split(";", 1)[-1]
    return ident[2:] if ident[:2] in ("s=", "i=", "g=", "b=") else ident


class OpcUaSource:
    """Reads one OPC UA server; see the module docstring."""

    def __init__(self, cfg: OpcUaConnection) -> None:
        self.cfg = cfg
        self._last_notified: dict[str, int] = {}

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        client = Client(self.cfg.endpoint, timeout=self.cfg.timeout_s)
        try:
            await client.connect()
        except (OSError, asyncio.TimeoutError, UaError) as exc:
            raise SourceError(f"{self.cfg.endpoint}: cannot connect ({type(exc).__name__}: {exc})",
                              fix="check the endpoint, the network and that the server runs", retryable=True) from exc
        try:
            nodes = await self._resolve(client, emitter)
            on_connected()
            if self.cfg.mode == "polling":
                await self._poll(client, nodes, emitter)
            else:
                await self._subscribe(client, nodes, emitter)
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout=2)
            except (OSError, asyncio.TimeoutError, UaError, RuntimeError, AttributeError):
                pass  # the link is already gone; nothing to close cleanly

    async def _resolve(self, client: Client, emitter: Emitter) -> dict[str, Node]:
        ns_index: int | None = None
        if self.cfg.namespace_uri:
            try:
                ns_index = await client.get_namespace_index(self.cfg.namespace_uri)
            except ValueError as exc:
                raise SourceError(
                    f"{self.cfg.endpoint}: namespace {self.cfg.namespace_uri!r} is not on the server",
                    fix="check namespace_uri against the server's NamespaceArray (gatewayctl opcua browse)",
                ) from exc
        nodes: dict[str, Node] = {}
        for nid in self.cfg.nodes:
            text = nid if nid.startswith(("ns=", "nsu=")) or ns_index is None else f"ns={ns_index};{nid}"
            nodes[tag_of(nid)] = client.get_node(text)
        return nodes

    async def _poll(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> None:
        tags, node_list = list(nodes), list(nodes.values())
        while True:
            t0 = time.monotonic()
            values = await client.read_attributes(node_list, AttributeIds.Value)
            for tag, dv in zip(tags, values, strict=True):
                self._emit(emitter, tag, dv)
            await asyncio.sleep(max(0.0, self.cfg.scan_interval_s - (time.monotonic() - t0)))

    async def _subscribe(self, client: Client, nodes: dict[str, Node], emitter: Emitter) -> None:
        handler = _Handler(self, emitter, {n.nodeid: t for t, n in nodes.items()})
        sub = await client.create_subscription(self.cfg.publishing_interval_ms, handler)
        node_list = list(nodes.values())
        tags = list(nodes)
        for start in range(0, len(node_list), BATCH):
            results = await sub.subscribe_data_change(
                node_list[start : start + BATCH], sampling_interval=ua.Double(self.cfg.sampling_interval_ms)
            )
            for tag, res in zip(tags[start : start + BATCH], results, strict=True):
                if isinstance(res, ua.StatusCode):
                    emitter.emit(tag, None, Quality.BAD)
                    emitter.counters.read_errors += 1
                    log.warning("connection %s: node for tag %s rejected by the server: %s (fix the node id)",
                                self.cfg.name, tag, res.name)
        while True:
            await asyncio.sleep(self.cfg.watchdog_s)
            if handler.error is not None:
                raise SourceError(f"{self.cfg.endpoint}: subscription failed: {handler.error}", retryable=True)
            await self._watchdog(client, nodes)

    async def _watchdog(self, client: Client, nodes: dict[str, Node]) -> None:
        """Raise if values moved on the server without reaching us through the subscription (silent)."""
        tags, node_list = list(nodes), list(nodes.values())
        values = await client.read_attributes(node_list, AttributeIds.Value)  # also proves the session lives
        slack_ns = int((self.cfg.publishing_interval_ms / 1000 + self.cfg.watchdog_s / 2) * 1e9)
        for tag, dv in zip(tags, values, strict=True):
            ts = _ts_ns(dv.SourceTimestamp)
            seen = self._last_notified.get(tag)
            if ts is not None and seen is not None and ts - seen > slack_ns and _quality(dv) == Quality.GOOD:
                raise SourceError(
                    f"{self.cfg.endpoint}: subscription went silent (tag {tag} changed on the server "
                    f"{(ts - seen) / 1e9:.0f} s after its last notification); rebuilding it", retryable=True,
                )

    def _emit(self, emitter: Emitter, tag: str, dv: ua.DataValue) -> None:
        value, ok = _value(dv.Value.Value if dv.Value is not None else None)
        quality = _quality(dv) if ok else Quality.BAD
        ts = _ts_ns(dv.SourceTimestamp) or _ts_ns(dv.ServerTimestamp)
        if ts is not None:
            self._last_notified[tag] = ts
        emitter.emit(tag, value, quality, ts)


class _Handler:
    """asyncua calls this from its own task for every notification."""

    def __init__(self, source: OpcUaSource, emitter: Emitter, tags: dict[ua.NodeId, str]) -> None:
        self.source = source
        self.emitter = emitter
        self.tags = tags
        self.error: str | None = None

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        tag = self.tags.get(node.nodeid)
        if tag is not None:
            self.source._emit(self.emitter, tag, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        self.error = f"status change {status}"
