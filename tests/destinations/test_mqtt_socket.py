"""The MQTT destination's connection sends each packet at once (TCP_NODELAY), over TLS as to IoT Core.

With Nagle's algorithm on (paho's default) a PUBLISH written while the previous one is not yet acknowledged by TCP
waits for that ACK, which the receiver's delayed ACK holds back ~40 ms; the latency this costs is measured by
bench/bench_pipeline_latency.py, not here.
"""

from __future__ import annotations

import asyncio
import socket

from devkit.peers import Mosquitto
from gateway.destinations.mqtt import MqttConfig, MqttDestination, MqttTls
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
