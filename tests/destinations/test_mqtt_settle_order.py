"""The MQTT destination's first send waits for the first connection attempt to settle (``_settled``) and then asks
whether it connected: the outcome must be recorded before the waiter is woken.

Found in a full test run under load: the first send of test_mqtt_socket raised "not connected (not connected yet)"
while the log said "connected": ``_on_connect`` woke the waiter before it marked the connection up.
"""

from __future__ import annotations

import threading
from typing import Any

from gateway.destinations.mqtt import MqttConfig, MqttDestination


class _Reason:
    def __init__(self, failure: bool) -> None:
        self.is_failure = failure

    def __str__(self) -> str:
        return "Not authorized" if self.is_failure else "Success"


class _SeenAtSet(threading.Event):
    """An event that notes what the destination says at the moment it is set (what a woken waiter would see)."""

    def __init__(self, dest: MqttDestination) -> None:
        super().__init__()
        self.dest = dest
        self.seen: list[tuple[bool, str]] = []

    def set(self) -> None:
        self.seen.append((self.dest._connected.is_set(), self.dest._last_error))
        super().set()


def _destination() -> tuple[MqttDestination, _SeenAtSet]:
    dest = MqttDestination(MqttConfig(name="settle", host="127.0.0.1", port=1, client_id="settle-test", topic="t"))
    settled = _SeenAtSet(dest)
    dest._settled = settled
    return dest, settled


def test_a_waiter_woken_by_the_connack_sees_the_connection_up() -> None:
    dest, settled = _destination()
    none: Any = None
    dest._on_connect(none, none, none, _Reason(False), none)
    assert settled.seen == [(True, "")]


def test_a_waiter_woken_by_a_refusal_or_a_drop_sees_why() -> None:
    dest, settled = _destination()
    none: Any = None
    dest._on_connect(none, none, none, _Reason(True), none)
    dest._on_connect(none, none, none, _Reason(False), none)
    dest._on_disconnect(none, none, none, "connection lost", none)
    assert settled.seen == [(False, "broker refused the connection: Not authorized"), (True, ""),
                            (False, "disconnected: connection lost")]


def test_a_waiter_woken_by_a_failed_attempt_sees_a_cause_not_the_initial_text() -> None:
    dest, settled = _destination()
    none: Any = None
    dest._on_connect_fail(none, none)
    assert settled.seen == [(False, "cannot connect: refused, unreachable or the TLS handshake failed")]
