"""The OPC DA endpoint as the real OpenOPC gateway: TLS, timestamp formats, 0.0.0.0 proxies, named groups.

Each check goes through the unmodified ``OpenOPC.open_client``; TLS is switched on the way NOTES 5 says works with
that client, purely through ``PYRO_SSL*`` environment variables, so it runs in a child interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import OpenOPC
import Pyro4

from tests.support.simulator import Served, start_opcda_simulator

_CLIENT = """
import json, sys, OpenOPC, Pyro4
Pyro4.config.COMMTIMEOUT = 10
opc = OpenOPC.open_client("127.0.0.1", int(sys.argv[1]))
opc.connect()
print(json.dumps(opc.read(["Reactor.Pressure", "Reactor.NoSuchItem"])))
opc.close()
"""


def _child(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_")}
    return subprocess.run([sys.executable, "-c", _CLIENT, str(port)], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_open_client_over_mutual_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    proc, port = start_opcda_simulator(tmp_path, extra=["--opcda-tls-dir", str(certs)])
    try:
        tls = {"PYRO_SSL": "1", "PYRO_SSL_CACERTS": str(certs / "ca.pem")}
        ok = _child(port, {**tls, "PYRO_SSL_CLIENTCERT": str(certs / "client.pem"),
                           "PYRO_SSL_CLIENTKEY": str(certs / "client.key")})
        assert ok.returncode == 0, ok.stderr
        (item, value, quality, _stamp), unknown = json.loads(ok.stdout)
        assert (item, quality) == ("Reactor.Pressure", "Good") and 2600 < value < 2800
        assert unknown == ["Reactor.NoSuchItem", None, "Error", None]
        no_client_cert = _child(port, tls)
        assert no_client_cert.returncode != 0 and "_ssl.c" in no_client_cert.stderr  # refused in the TLS handshake
        plain = _child(port, {})
        assert plain.returncode != 0
        assert "NO authentication" not in proc.output()  # the plain-link warning is for gateways without TLS
    finally:
        proc.stop()


def test_legacy_timestamps_and_proxies_for_all_interfaces(tmp_path: Path) -> None:
    proc, port = start_opcda_simulator(tmp_path, extra=["--opcda-time-format", "legacy",
                                                        "--opcda-report-host", "0.0.0.0"])
    try:
        Pyro4.config.COMMTIMEOUT = 10
        opc = OpenOPC.open_client("127.0.0.1", port)
        assert (opc._pyroUri.host, opc._pyroUri.port) == ("0.0.0.0", port)  # what a gateway on 0.0.0.0 hands out
        opc._pyroUri.host = "127.0.0.1"
        opc.connect()
        _value, quality, stamp = opc.read("Reactor.Pressure")
        assert quality == "Good" and re.fullmatch(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d", stamp), stamp
        parsed = datetime.strptime(stamp, "%m/%d/%y %H:%M:%S").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 120
        opc.close()
        assert "NO authentication" in proc.output()
    finally:
        proc.stop()


def test_named_groups_keep_their_items_until_rebuilt(served: Served) -> None:
    opc = OpenOPC.open_client("127.0.0.1", served.opcda_port)
    opc.connect()
    first = opc.read(["Reactor.Pressure", "No.Such"], group="g", include_error=True)
    assert [(r[0], r[2]) for r in first] == [("Reactor.Pressure", "Good"), ("No.Such", "Error")]
    assert first[0][4] == "The operation completed successfully." and "not defined" in first[1][4]
    assert [r[0] for r in opc.read(["Reactor.Temperature"], group="g")] == ["Reactor.Pressure", "No.Such"]
    assert [r[0] for r in opc.read(group="g")] == ["Reactor.Pressure", "No.Such"]
    assert [r[0] for r in opc.read(["Reactor.Temperature"], group="g", rebuild=True)] == ["Reactor.Temperature"]
    assert opc.read(group="empty") == [] and sorted(opc.groups()) == ["empty", "g"]
    opc.close()
