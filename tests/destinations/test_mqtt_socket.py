"""The MQTT destination's connection sends each packet at once (TCP_NODELAY), over TLS as to IoT Core.

With Nagle's algorithm on (paho's default) a PUBLISH written while the previous one is not yet acknowledged by TCP
waits for that ACK, which the receiver's delayed ACK holds back ~40 ms; the latency this costs is measured by
bench/bench_pipeline_latency.py, not here. It also acknowledges the broker's segments at once after each PUBACK
(TCP_QUICKACK), for the same interaction in the other direction.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

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


def test_a_batch_of_large_messages_is_acknowledged_without_a_delayed_ack_stall(mosquitto: Mosquitto) -> None:
    """mosquitto sends PUBACKs with Nagle on: its next PUBACK waits until we ACK the previous one, which Linux delays
    40 ms when we have nothing left to send. A batch of many large messages then takes >= 40 ms to be acknowledged
    most of the time (5-10 ms otherwise); the destination asks for immediate ACKs after each PUBACK instead. The
    median of 10 sends is compared: without the fix it was 47-50 ms in every run, with it 6-10 ms."""
    tls = MqttTls(ca_file=str(mosquitto.pki.ca), cert_file=str(mosquitto.pki.client_cert),
                  key_file=str(mosquitto.pki.client_key))
    dest = MqttDestination(MqttConfig(name="quickack", host="127.0.0.1", port=mosquitto.tls_port, tls=tls,
                                      client_id="quickack-test", topic="t/{source}", max_message_bytes=128 * 1024))
    # ~18 messages of 128 KB in one send, as a backlog drain sends them
    records = [make_record("plc", f"tag{i % 100:03d}", float(i), seq=i) for i in range(10000)]

    async def scenario() -> list[float]:
        await dest.start()
        try:
            await dest.send(records[:1])  # connected
            times = []
            for _ in range(10):
                messages, _ = dest.messages(records)
                assert len(messages) > 12
                t0 = time.perf_counter()
                await dest._offload(dest._publish_all, messages)
                times.append(time.perf_counter() - t0)
            return times
        finally:
            await dest.close(5)

    times = asyncio.run(scenario())
    assert statistics.median(times) < 0.035, f"acknowledged in {[round(t * 1000, 1) for t in times]} ms"
