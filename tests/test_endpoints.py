"""gateway.endpoints: the one address parser and default-port table that deployment validation, doctor and the
command line's HOST:PORT options share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from gateway.cli.checks import endpoint_of
from gateway.endpoints import DEFAULT_PORTS, host_port
from gateway.errors import ConfigError, EndpointError
from gateway.ipc_config import endpoints


@pytest.mark.parametrize(("value", "default_scheme", "expected"), [
    ("opc.tcp://10.0.0.5", None, ("10.0.0.5", 4840)),
    ("opc.tcp://PLC.local:49320/UA/Server", None, ("plc.local", 49320)),
    # the two tables disagreed: validation knew tcp:// and doctor knew modbus://; both mean Modbus TCP
    ("tcp://plc", None, ("plc", 502)),
    ("modbus://plc", None, ("plc", 502)),
    ("mqtt://broker", None, ("broker", 1883)),
    ("mqtts://broker", None, ("broker", 8883)),
    ("http://127.0.0.1", None, ("127.0.0.1", 80)),
    ("https://iotsitewise.eu-west-1.amazonaws.com", None, ("iotsitewise.eu-west-1.amazonaws.com", 443)),
    ("127.0.0.1:8088", None, ("127.0.0.1", 8088)),
    ("[::1]:8088", None, ("::1", 8088)),
    ("::1:8088", None, ("::1", 8088)),
    ("pool.ntp.org", "ntp", ("pool.ntp.org", 123)),
    ("time.local:1123", "ntp", ("time.local", 1123)),
])
def test_host_port(value: str, default_scheme: str | None, expected: tuple[str, int]) -> None:
    assert host_port(value, default_scheme) == expected


@pytest.mark.parametrize(("value", "why"), [
    ("opc.tcp://:4840", "no host"),
    ("opc.tcp://user:secret@plc:port", "Port could not be cast"),
    ("127.0.0.1:70000", "out of range"),
    ("foo://plc", "no port, and none is usual for 'foo'"),
    ("plc", "no port"),
])
def test_an_unusable_address_names_itself_and_the_fix(value: str, why: str) -> None:
    with pytest.raises(EndpointError) as caught:
        host_port(value, what="--stream-manager")
    assert isinstance(caught.value, ConfigError)  # the CLI and validation report it like any bad setting
    text = str(caught.value)
    assert text.startswith("--stream-manager '") and why in text and "Fix: write it as " in text
    assert "secret" not in text  # user info never reaches a message


def test_a_bare_port_takes_the_default_host() -> None:
    assert host_port(":8088", default_host="127.0.0.1") == ("127.0.0.1", 8088)


def test_the_table_covers_every_scheme_a_model_uses() -> None:
    assert {"opc.tcp", "modbus", "tcp", "mqtt", "mqtts", "http", "https"} <= set(DEFAULT_PORTS)
    assert DEFAULT_PORTS["tcp"] == DEFAULT_PORTS["modbus"] == 502


class _Peer(BaseModel):
    name: str
    endpoint: str


def test_validation_and_doctor_agree_on_every_scheme() -> None:
    for scheme, port in DEFAULT_PORTS.items():
        url = f"{scheme}://peer.local"
        assert list(endpoints(_Peer(name="p", endpoint=url))) == [("endpoint", "peer.local", port)]
        assert endpoint_of(SimpleNamespace(endpoint=url)) == ("peer.local", port)


def test_unusable_urls_are_skipped_by_validation_and_doctor() -> None:
    assert list(endpoints(_Peer(name="p", endpoint="foo://peer"))) == []
    assert endpoint_of(SimpleNamespace(endpoint="opc.tcp://peer:nope")) is None
