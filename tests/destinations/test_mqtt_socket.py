"""The MQTT destination's connection sends each packet at once (TCP_NODELAY), over TLS as to IoT Core.

With Nagle's algorithm on (paho's default) a PUBLISH written while the previous one is not yet acknowledged by TCP
waits for that ACK, which the receiver's delayed ACK holds back ~40 ms; the latency this costs is measured by
bench/bench_pipeline_latency.py, not here. It also acknowledges the broker's segments at once after each PUBACK
(TCP_QUICKACK), for the same interaction in the other direction.
"""

from __future__ import annotations

import asyncio
import socket

from devkit.peers import Mosquitto
from gateway.destinations.mqtt import MqttConfig, MqttDestination, MqttTls, _ack_at_once, _paho_client
from gateway.record import make_record


def test_the_broker_connection_has_nagle_off(mosquitto: Mosquitto) -> None:
    tls = MqttTls(ca_file=str(mosquitto.pki.ca), cert_file=str(mosquitto.pki.client_cert),
                  key_file=str(mosquitto.pki.client_key))
    dest = MqttDestination(MqttConfig(name="nodelay", host="127.0.0.1", port=mosquitto.tls_port, tls=tls,
                                      client_id="nodelay-test", topic="t/{source}"))

    async def scenario() -> int:
        await dest.start()
        try:
            await dest.send([make_record("plc", "a", 1.0, seq=1)])  # returns once PUBACKed: the connection is up
            sock = dest._client.socket()  # the socket is the thing under test
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            await dest.close(5)

    assert asyncio.run(scenario()) != 0


def test_every_puback_asks_the_kernel_to_acknowledge_at_once() -> None:
    """mosquitto sends PUBACKs with Nagle on: its next PUBACK waits until we ACK the previous one, which Linux delays
    40 ms when we have nothing left to send (a batch of 18 x 128 KB messages took 47-50 ms to be acknowledged, 6-10 ms
    with the fix: bench/bench_publisher_ratio.py measures it; timing belongs in benchmarks, not here). So the
    client's PUBACK callback sets TCP_QUICKACK on the broker socket, every time (the kernel clears it by itself)."""

    class Sock:
        options: list[tuple[int, int, int]] = []

        def setsockopt(self, level: int, option: int, value: int) -> None:
            self.options.append((level, option, value))

    class Client:
        sock = Sock()

        def socket(self) -> Sock:
            return self.sock

    assert _paho_client("quickack").on_publish is _ack_at_once
    client = Client()
    for mid in (1, 2):
        _ack_at_once(client, None, mid, 0, None)
    assert Sock.options == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)] * 2
    _ack_at_once(type("NoSocket", (), {"socket": lambda self: None})(), None, 3, 0, None)  # not connected: no error
