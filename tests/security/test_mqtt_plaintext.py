"""Issue 12 item 3 (MQTT): a password on a plain TCP MQTT connection travels in clear.

A small MQTT listener of our own on 127.0.0.1 records every packet the publisher sends (and answers CONNACK and
PUBACK), so the test sees exactly what an eavesdropper on the plant network would see.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.peers import wait_for
from gateway.componentconfig import PublisherConfig
from gateway.config import validate
from gateway.destinations.base import Route
from gateway.destinations.mqtt import MqttConfig, MqttDestination
from gateway.errors import ConfigError
from gateway.record import make_record
from tests.support.destination_harness import send_retrying

SECRET = "Zq7-mqtt-S3CRET"


class RawBroker:
    """Just enough of an MQTT 3.1.1 broker: accepts CONNECT, PUBLISH QoS 0/1 and PINGREQ, and records the bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connects = 0
        self.publishes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._session(conn)

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n and not self._stop.is_set():
            try:
                chunk = conn.recv(n - len(data))
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        if len(data) < n:
            raise ConnectionError("stopping")
        self.received += data
        return data

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        try:
            while True:
                first = self._read(conn, 1)[0]
                length, shift = 0, 0
                while True:  # remaining length: a base-128 varint
                    byte = self._read(conn, 1)[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = self._read(conn, length)
                kind = first >> 4
                if kind == 1:  # CONNECT
                    self.connects += 1
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 3:  # PUBLISH
                    self.publishes += 1
                    if (first >> 1) & 3:
                        topic_len = int.from_bytes(body[:2], "big")
                        conn.sendall(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
        except (ConnectionError, OSError):
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def broker() -> Iterator[RawBroker]:
    b = RawBroker()
    yield b
    b.stop()


def _dest(port: int, **extra: object) -> dict[str, object]:
    return {"type": "mqtt", "name": "plant", "host": "127.0.0.1", "port": port, "username": "gateway",
            "password": SECRET, "retry_min_s": 0.05, **extra}


def _publish_once(cfg: MqttConfig) -> None:
    async def go() -> None:
        sink = MqttDestination(cfg)
        await sink.start()
        try:
            for i in range(3):
                await send_retrying(sink, [make_record("plc", "line/temp", float(i), seq=i)])
        finally:
            await sink.close(5.0)

    asyncio.run(go())


def test_a_password_without_tls_is_refused_with_one_line_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        validate(PublisherConfig, {"destinations": [_dest(1883)]}, origin="test")
    problems = info.value.problems
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith("destinations.0.mqtt.password:"), line
    assert "tls" in line and "allow_plaintext: true" in line, line
    assert SECRET not in str(info.value) + line


def test_tls_or_no_password_stay_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read at validation")
    validate(PublisherConfig, {"destinations": [_dest(8883, tls={"ca_file": str(ca)})]}, origin="test")
    validate(PublisherConfig, {"destinations": [{"type": "mqtt", "name": "p", "host": "h"}]}, origin="test")


def test_allowed_plaintext_connects_sends_the_password_in_clear_and_warns_once(
        broker: RawBroker, caplog: pytest.LogCaptureFixture) -> None:
    cfg = validate(PublisherConfig, {"destinations": [_dest(broker.port, allow_plaintext=True, route=Route(
        streams=["values"]).model_dump())]}, origin="test").destinations[0]
    assert isinstance(cfg, MqttConfig)
    with caplog.at_level(logging.WARNING, logger="gateway.destinations.mqtt"):
        _publish_once(cfg)
    wait_for(lambda: broker.publishes >= 3, 10, "three acknowledged publishes")
    # what allow_plaintext knowingly accepts: anyone on the path reads the password
    assert SECRET.encode() in bytes(broker.received)
    assert broker.connects == 1
    plain = [r for r in caplog.records if r.levelno == logging.WARNING and "plain" in r.getMessage()]
    assert len(plain) == 1, [r.getMessage() for r in caplog.records]
    assert SECRET not in caplog.text
    assert "plant" in plain[0].getMessage() and f"127.0.0.1:{broker.port}" in plain[0].getMessage()


def test_a_plain_channel_without_password_warns_once_too(broker: RawBroker,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = MqttConfig(name="open", host="127.0.0.1", port=broker.port, retry_min_s=0.05)
    with caplog.at_level(logging.WARNING, logger="gateway.destinations.mqtt"):
        _publish_once(cfg)
    plain = [r for r in caplog.records if r.levelno == logging.WARNING and "plain" in r.getMessage()]
    assert len(plain) == 1, [r.getMessage() for r in caplog.records]
