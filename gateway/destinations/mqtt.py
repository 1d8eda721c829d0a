"""MQTT destination (paho-mqtt): any broker (plant SCADA, a local mosquitto), or AWS IoT Core outside Greengrass.

Records are batched into JSON messages up to ``max_message_bytes`` (IoT Core's limit is 128 KB) on topics from a
template, published with QoS 1, and a send returns only when every message was acknowledged (PUBACK). While the
broker is unreachable a send fails fast and the stream keeps the data; paho's own queue is memory only and is not
relied on. Each message carries the ``meta`` header of its tags (units, range: see :mod:`gateway.destinations.payload`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from gateway.aio import Offload, finish_within
from gateway.destinations.base import DestinationConfigBase, SendResult
from gateway.destinations.payload import RECORD_FIELDS, MetaCache, pack_by_topic, template_problem
from gateway.diagnostics import Finding, failed, passed
from gateway.errors import DestinationError
from gateway.record import Record

log = logging.getLogger(__name__)


def _paho_client(client_id: str) -> Any:
    # paho is imported here, not at the top: every component reads the publisher's config models, and only the
    # publisher with an MQTT destination needs the library in memory.
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_socket_open = _no_delay
    client.on_publish = _ack_at_once
    return client


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Send each packet at once (paho leaves Nagle's algorithm on). A PUBLISH that follows one not yet acknowledged
    by TCP otherwise waits for that ACK, which the broker's delayed ACK holds back ~40 ms: about 90 ms of a value's
    way to a subscriber at 1,000 values/s (bench/bench_pipeline_latency.py). Called at every (re)connect."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # not a TCP socket: nothing to tune, and no reason to fail the connect
        log.debug("mqtt: TCP_NODELAY not set: %s", exc)


def _ack_at_once(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
    """After each PUBACK, acknowledge the broker's TCP segments at once instead of after Linux's delayed-ACK timer.

    A broker with Nagle's algorithm on (mosquitto's default) holds each PUBACK until its previous one is
    acknowledged by TCP; once the last PUBLISH of a batch is written we have nothing to send that would carry that
    ACK, so the rest of the batch's PUBACKs wait ~40 ms: a backlog drain of 128 KB messages stalled 40 ms every
    10,000 records. TCP_QUICKACK sends the pending ACK now; the kernel clears it again by itself, hence at every
    PUBACK. Called on paho's network thread, right after it read the PUBACK."""
    sock = client.socket()
    if _QUICKACK is not None and sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except (OSError, AttributeError):  # not a TCP socket (a websocket or Unix socket): nothing to tune
            pass


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere the stall stays


def check_mqtt_topic(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (wildcards, empty levels at the ends, too long), or None."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        return f"topic {topic!r} is empty or holds a wildcard (+ #): fix the topic template or the tag names"
    if len(topic.encode()) > 65535:
        return f"topic of {len(topic.encode())} bytes is longer than MQTT allows: shorten the topic template"
    return None


class MqttTls(BaseModel):
    """Mutual TLS settings (AWS IoT Core: port 8883, or 443 with ALPN x-amzn-mqtt-ca)."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str = Field(description="CA certificate(s) that signed the broker's certificate (PEM).")
    cert_file: str | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    key_file: str | None = Field(default=None, description="Client private key (PEM) for mutual TLS.")
    alpn: list[str] = Field(default_factory=list, description="ALPN protocols, e.g. ['x-amzn-mqtt-ca'] on port 443.")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, path: str | None) -> str | None:
        # refused here, by `gatewayctl config check` and deployment validation, not later at the publisher's start
        if path and not Path(path).is_file():
            raise ValueError(f"file {path} does not exist: fix the path or copy the file there")
        return path


class MqttConfig(DestinationConfigBase):
    """Publish records to an MQTT broker."""

    type: Literal["mqtt"] = Field(default="mqtt", description="Destination type.")
    host: str = Field(description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 or 443 for TLS).")
    client_id: str = Field(default="factoryedge-publisher", description="MQTT client id (IoT Core: the thing name).")
    # tls and allow_plaintext come before password: its validator reads them (pydantic validates in field order)
    tls: MqttTls | None = Field(default=None, description="TLS settings; null for plain TCP.")
    allow_plaintext: bool = Field(
        default=False, description="Send a password over plain TCP (no tls) anyway: anyone on the network path "
        "reads it. Only for a broker on the same host or an isolated segment.",
    )
    username: str | None = Field(default=None, description="User name, if the broker wants one.")
    password: SecretStr | None = Field(default=None, description="Password; never logged.")
    # topic_vars comes before topic: its validator reads them (pydantic validates in field order)
    topic_vars: dict[str, str] = Field(default_factory=dict, description="Extra template fields, e.g. site, line.")
    topic: str = Field(
        default="factoryedge/{source}/{kind}",
        description="Topic template; fields {source}, {kind}, {tag}, {group} (the tag's parent path: Reactor for "
        "Reactor/Pressure) and any key of topic_vars (e.g. {site}); any other field is refused at validation.",
    )
    qos: Literal[0, 1] = Field(default=1, description="QoS; 1 (acknowledged) unless the data may be lost.")
    max_message_bytes: int = Field(default=128 * 1024, ge=1024, description="Largest message (IoT Core: 128 KB).")
    ack_timeout_s: float = Field(default=30.0, gt=0, description="How long to wait for acknowledgements.")
    keepalive_s: int = Field(default=30, ge=5, description="MQTT keepalive.")


    @field_validator("topic")
    @classmethod
    def _topic_fields_exist(cls, topic: str, info: ValidationInfo) -> str:
        if "topic_vars" in info.data:  # else topic_vars itself is refused, one line is enough
            problem = template_problem(topic, [*RECORD_FIELDS, *info.data["topic_vars"]])
            if problem:
                raise ValueError(problem)
        return topic

    @field_validator("password")
    @classmethod
    def _password_needs_tls(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # MQTT's CONNECT carries the password as plain bytes: without TLS whoever is on the path reads it
        # "tls" absent from info.data: tls itself was refused (its own line says why); null: no TLS at all
        if password is not None and "tls" in info.data and info.data["tls"] is None \
                and not info.data.get("allow_plaintext"):
            raise ValueError("a password without tls is sent in clear in the MQTT CONNECT packet: set tls "
                             "(tls.ca_file, port 8883), or set allow_plaintext: true to send it anyway")
        return password

    def build(self) -> MqttDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return MqttDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of the broker: TCP, TLS and CONNACK (see :mod:`gateway.plugin`)."""
        return await diagnose(self, timeout_s)


class MqttDestination:
    def __init__(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._offload = Offload(f"mqtt-{cfg.name}")
        self._connected = threading.Event()
        self._last_error = "not connected yet"
        self._closing = False
        self._settled = threading.Event()  # the first connection attempt succeeded or failed
        self._client = _paho_client(cfg.client_id)
        self._client.max_inflight_messages_set(1000)
        # Reconnect as fast as the destination retries: a link that comes back is used at once.
        self._client.reconnect_delay_set(max(1, round(cfg.retry_min_s)), max(1, round(min(cfg.retry_max_s, 30))))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        if cfg.username:
            self._client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        self._tls_loaded = False
        self._meta = MetaCache()  # the latest metadata per tag: each message's header (gateway.destinations.payload)

    def _tls_context(self, tls: MqttTls) -> ssl.SSLContext:
        for what, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            if path and not Path(path).is_file():  # checked at validation; gone since (ssl would not name it)
                raise DestinationError(f"mqtt destination {self.name}: tls.{what} {path} does not exist",
                                       fix=f"copy the file there or fix tls.{what}", retryable=True)
        try:
            ctx = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise DestinationError(f"mqtt destination {self.name}: cannot load TLS files: {exc}",
                                   fix="check tls.ca_file, tls.cert_file and tls.key_file") from exc
        if tls.alpn:
            ctx.set_alpn_protocols(tls.alpn)
        return ctx

    async def start(self) -> None:
        # TLS files are loaded here, not in the constructor: a file gone since validation fails this destination's
        # start (the publisher retries it and shows the error) instead of stopping the whole publisher.
        if self.cfg.tls and not self._tls_loaded:
            self._client.tls_set_context(self._tls_context(self.cfg.tls))
            self._tls_loaded = True
        if self.cfg.tls is None:
            # logged once per start: the setting is allowed, the risk must still be visible in the log
            what = "records, user name and password" if self.cfg.password else "records"
            log.warning("mqtt destination %s: plain TCP to %s:%d (no tls): %s travel unencrypted and the broker "
                        "is not authenticated; set tls to protect them", self.name, self.cfg.host, self.cfg.port,
                        what)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    # Both callbacks record the outcome before they set _settled: a send waiting for the first attempt wakes on it
    # and reads _connected at once (setting it first made a first send fail with "not connected" under load).
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._set_error(f"broker refused the connection: {reason}")
        else:
            log.info("mqtt destination %s: connected to %s:%d", self.name, self.cfg.host, self.cfg.port)
            self._last_error = ""
            self._connected.set()
        self._settled.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho passes no cause: the TCP connect or the TLS handshake failed (its log callback has the details)
        self._set_error("cannot connect: refused, unreachable or the TLS handshake failed")
        self._settled.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._closing:
            if self._connected.is_set():
                log.warning("mqtt destination %s: disconnected (%s)", self.name, reason)
            self._connected.clear()
            self._set_error(f"disconnected: {reason}")
        self._settled.set()

    def _set_error(self, text: str) -> None:
        if text != self._last_error:
            log.warning("mqtt destination %s: %s", self.name, text)
        self._last_error = text

    def messages(self, records: list[Record]) -> tuple[list[tuple[str, bytes]], list[tuple[Record, str]]]:
        """Group records by topic and pack them into messages under the size limit; return (messages, refused)."""
        packed, refused = pack_by_topic(records, self.cfg.topic, self.cfg.topic_vars, self.cfg.max_message_bytes,
                                        check_mqtt_topic, self._meta)
        return [(topic, payload) for topic, payload, _ in packed], refused

    async def send(self, records: list[Record]) -> SendResult:
        messages, rejected = self.messages(records)
        await self._offload(self._publish_all, messages)
        return SendResult(rejected=rejected, bytes_sent=sum(len(p) for _, p in messages))

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        # At start-up the CONNACK is usually a moment away: wait for the first attempt's outcome rather than log
        # a failure that is not one.
        self._settled.wait(min(self.cfg.ack_timeout_s, 5.0))
        if not self._connected.is_set():
            raise DestinationError(f"mqtt destination {self.name}: broker {self.cfg.host}:{self.cfg.port} not "
                                   f"connected ({self._last_error})",
                                   fix="check the broker, network, certificates and client id; data stays buffered",
                                   retryable=True)
        infos = [self._client.publish(topic, payload, qos=self.cfg.qos) for topic, payload in messages]
        deadline = time.monotonic() + self.cfg.ack_timeout_s
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise DestinationError(f"mqtt destination {self.name}: publish failed: {exc}",
                                       fix="the batch will be retried", retryable=True) from exc
            if not info.is_published():
                raise DestinationError(f"mqtt destination {self.name}: no acknowledgement within "
                                       f"{self.cfg.ack_timeout_s} s", fix="the batch will be retried", retryable=True)

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        # paho's network thread is joined, and a publish in flight waits for its PUBACK (up to ack_timeout_s from
        # a broker that may never answer): off the loop, until the deadline
        await finish_within(f"mqtt destination {self.name}", timeout_s, self._shutdown)

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._offload.close()


async def diagnose(cfg: MqttConfig, timeout_s: float) -> list[Finding]:
    """TCP reachability, the TLS handshake (when configured) and the broker's CONNACK, each its own finding."""
    return await asyncio.to_thread(_diagnose, cfg, timeout_s)


def _diagnose(cfg: MqttConfig, timeout_s: float) -> list[Finding]:
    where = f"{cfg.host}:{cfg.port}"
    try:
        raw = socket.create_connection((cfg.host, cfg.port), timeout=timeout_s)
    except OSError as exc:
        return [failed("tcp", f"{where} not reachable: {exc}", "check host, port, firewall and that the broker runs")]
    findings = [passed("tcp", f"{where} accepts connections")]
    ctx: ssl.SSLContext | None = None
    with raw:
        if cfg.tls:
            try:
                ctx = MqttDestination(cfg)._tls_context(cfg.tls)
                with ctx.wrap_socket(raw, server_hostname=cfg.host) as tls:
                    peer: Any = tls.getpeercert() or {}
                    cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "?")
                    findings.append(passed("tls", f"{tls.version()} handshake, broker certificate CN={cn}"))
            except (DestinationError, ssl.SSLError, OSError) as exc:
                findings.append(failed("tls", f"handshake with {where} failed: {exc}",
                                       "check tls.ca_file (it must have signed the broker's certificate, which must "
                                       "name the host), the client certificate and key, and the port"))
                return findings
    findings.append(_connack(cfg, ctx, timeout_s))
    return findings


def _connack(cfg: MqttConfig, ctx: ssl.SSLContext | None, timeout_s: float) -> Finding:
    # Another client id: reusing the publisher's would disconnect the running component.
    client = _paho_client(f"{cfg.client_id}-doctor")
    outcome: list[str] = []
    client.on_connect = lambda c, u, f, reason, p: outcome.append(str(reason) if reason.is_failure else "ok")
    client.on_disconnect = lambda *a: outcome.append("closed")
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if ctx is not None:
        client.tls_set_context(ctx)
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 5))
        while not outcome and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (OSError, ssl.SSLError, ValueError) as exc:
        outcome.append(f"closed ({exc})")
    finally:
        client.disconnect()
    result = outcome[0] if outcome else "no answer"
    if result == "ok":
        return passed("mqtt connect", f"CONNACK accepted (client id {cfg.client_id}-doctor)")
    if result.startswith("closed"):
        return failed("mqtt connect", f"the broker closed the connection without CONNACK {result[6:]}".strip(),
                      "with mutual TLS this is a refused or missing client certificate (tls.cert_file/key_file; on "
                      "IoT Core also an inactive certificate or a policy that denies iot:Connect)")
    if result == "no answer":
        return failed("mqtt connect", f"no CONNACK within {timeout_s} s", "check that the port speaks MQTT")
    return failed("mqtt connect", f"broker refused the connection: {result}",
                  "check username/password, client id and the broker's access rules")
