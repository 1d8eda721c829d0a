"""``gatewayctl opcda servers | list | read`` against the simulator's OpenOPC gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devkit.faultproxy import FaultProxy
from devkit.peers import free_port
from gateway.cli.main import main
from tests.support.simulator import start_opcda_simulator


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_opcda_simulator(tmp_path_factory.mktemp("opcda-cli"), extra=["--opcda-report-host", "0.0.0.0"])
    yield port
    proc.stop()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_servers_list_and_read(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "opcda", "servers", "127.0.0.1", "--port", str(port), "--json", "--allow-plaintext")
    assert code == 0 and json.loads(out) == ["FactoryEdge.TEP.1"]
    code, out, _ = _run(capsys, "opcda", "list", "127.0.0.1", "--port", str(port), "--allow-plaintext")
    assert code == 0 and "Reactor" in out.split()
    code, out, _ = _run(capsys, "--json", "opcda", "list", "127.0.0.1", "Reactor.Pres*", "--flat", "--port", str(port),
                        "--allow-plaintext")
    assert code == 0 and json.loads(out) == ["Reactor.Pressure"]
    code, out, _ = _run(capsys, "opcda", "read", "127.0.0.1", "Reactor.Pressure", "--port", str(port), "--json",
                        "--allow-plaintext")
    (row,) = json.loads(out)
    assert code == 0 and row["quality"] == "Good" and 2600 < row["value"] < 2800 and row["utc"].endswith("+00:00")
    code, out, _ = _run(capsys, "opcda", "read", "127.0.0.1", "Reactor.Pressure", "No.Such", "--port", str(port),
                        "--server", "FactoryEdge.TEP.1", "--allow-plaintext")
    lines = out.splitlines()
    assert code == 1 and lines[0].split()[:3] == ["item", "value", "quality"]
    assert "Good" in lines[1] and "Error" in lines[2] and "not defined" in lines[2]


def test_failures_say_what_and_how_to_fix(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "opcda", "read", "127.0.0.1", "X", "--port", str(port), "--server", "Wrong.Server",
                        "--allow-plaintext")
    assert code == 1 and "'Wrong.Server'" in err and "Fix:" in err
    code, _, err = _run(capsys, "opcda", "read", "127.0.0.1", "X", "--port", str(free_port()), "--timeout", "1",
                        "--allow-plaintext")
    assert code == 1 and "refused" in err and "gateway service runs" in err
    code, _, err = _run(capsys, "opcda", "list", "127.0.0.1", "--port", str(port), "--tls-ca", "c.pem",
                        "--tls-cert", "client.pem")
    assert code == 2 and "key_file" in err
    code, _, err = _run(capsys, "opcda", "servers", "127.0.0.1", "--port", str(port))
    assert code == 2 and "unencrypted" in err and "--allow-plaintext" in err and "--tls-ca" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as help_exit:
        main(["opcda", "--help"])
    assert help_exit.value.code == 0 and "gatewayctl opcda read" in capsys.readouterr().out


def test_the_client_proxy_for_0000_goes_where_the_gateway_was_reached(port: int,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    link = FaultProxy(port).start()
    try:
        code, out, _ = _run(capsys, "opcda", "read", "127.0.0.1", "Reactor.Level", "--port", str(link.port), "--json",
                            "--allow-plaintext")
        assert code == 0 and json.loads(out)[0]["quality"] == "Good"
        assert link.connections_accepted == 2  # the gateway object, then our client object: both through the link
    finally:
        link.stop()
