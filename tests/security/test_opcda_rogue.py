"""Issue 12 item 1: a rogue OpenOPC gateway cannot make any OPC DA client of ours decode anything but serpent.

Pyro4 4.82 decodes a handshake answer with whatever serializer the *server* names in the message header (NOTES
13), and pickle is always registered. The rogue gateway (tests/support/rogue_opcda.py) is a raw TCP server written
against Pyro4's wire format, not Pyro4 itself: it answers the connect handshake (CONNECTOK and CONNECTFAIL), a later
call, a later call flagged as an exception, and calls on the per-client object it hands out (itself asking for
pickle) with a message whose header names pickle, marshal, json, dill, cloudpickle or msgpack. For the pickle family
the payload creates a marker folder when decoded; for the others decoding must simply be refused. It speaks mutual
TLS with certificates our CA signed: a compromised or impersonated gateway holds exactly such a certificate.

Every client path runs against it: the collector, ``gatewayctl opcda servers | list | read`` and ``gatewayctl
doctor``. The marker must never appear and each must report a refusal that names the serializer.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import ROOT
from gateway.cli.main import main
from gateway.collector import Collector
from gateway.sources.opcda import OpcDaSource
from gateway.sources.opcda_config import OpcDaConnection
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore
from simulator.opcda_server import ensure_tls_files
from tests.support.rogue_opcda import FOREIGN, STAGES, RogueGateway, client_tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rogue-certs")
    ensure_tls_files(folder)
    return folder


@pytest.fixture(params=[(s, st) for s in FOREIGN for st in STAGES], ids=lambda p: f"{p[0]}-{p[1]}")
def rogue(request: pytest.FixtureRequest, certs: Path, tmp_path: Path) -> Iterator[RogueGateway]:
    serializer, stage = request.param
    gw = RogueGateway(certs, serializer, stage, tmp_path / "marker")
    gw.marker = tmp_path / "marker"  # type: ignore[attr-defined]
    gw.serializer = serializer  # type: ignore[attr-defined]
    yield gw
    gw.stop()


def _refused(text: str, rogue: Any) -> None:
    assert rogue.evil_sent >= 1, "the rogue never got to answer: the test did not test anything"
    assert not rogue.marker.exists(), "the rogue gateway's pickle payload was decoded: code execution"
    assert f"encoded with {rogue.serializer}" in text and "only serpent" in text, text


def test_collector_never_decodes_a_foreign_serializer(rogue: Any, certs: Path, tmp_path: Path) -> None:
    conn = OpcDaConnection(name="da", host="127.0.0.1", port=rogue.port, server="FactoryEdge.TEP.1",
                           items=["Reactor.Pressure"], tls=client_tls(certs), timeout_s=3, connect_timeout_s=3,
                           reconnect_min_s=0.05, reconnect_max_s=0.2)

    async def body() -> str:
        collector = Collector("test", EmbeddedStore(tmp_path / "store"), StreamSpec(name="opcda"), OpcDaSource)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([conn], stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not ((c := collector.connections.get("da")) and c.counters.connect_retries >= 1):
            assert loop.time() < deadline and not task.done(), collector.status()
            await asyncio.sleep(0.02)
        stop.set()
        await task
        return str(collector.status()["connections"]["da"]["last_error"])

    _refused(asyncio.run(body()), rogue)


@pytest.mark.parametrize("command", [["servers"], ["list", "*"], ["read", "Reactor.Pressure"]],
                         ids=lambda c: c[0])
def test_opcda_probes_never_decode_a_foreign_serializer(rogue: Any, certs: Path, command: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    tls = client_tls(certs)
    args = ["opcda", command[0], "127.0.0.1", *command[1:], "--port", str(rogue.port), "--timeout", "3",
            "--tls-ca", str(tls["ca_file"]), "--tls-cert", str(tls["cert_file"]), "--tls-key", str(tls["key_file"])]
    if command[0] != "servers":
        args += ["--server", "FactoryEdge.TEP.1"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1
    _refused(err, rogue)


def test_doctor_never_decodes_a_foreign_serializer(rogue: Any, certs: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "opcda_collector.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": {"kind": "embedded", "path": str(tmp_path / "data")},
        "connections": [{"name": "da", "host": "127.0.0.1", "port": rogue.port, "server": "FactoryEdge.TEP.1",
                         "items": ["Reactor.Pressure"], "tls": {k: str(v) for k, v in client_tls(certs).items()}}]}))
    code = main(["--json", "doctor", "--config", f"factoryedge.OpcDaCollector={cfg}", "--timeout", "3"])
    out = capsys.readouterr().out
    assert code == 1
    _refused(out, rogue)


@pytest.fixture
def pickle_rogue(certs: Path, tmp_path: Path) -> Iterator[Any]:
    gw: Any = RogueGateway(certs, "pickle", "connectok", tmp_path / "marker")
    gw.marker, gw.serializer = tmp_path / "marker", "pickle"
    yield gw
    gw.stop()


def test_serpent_only_is_enforced_at_import_in_a_fresh_interpreter() -> None:
    probe = ("import gateway.sources.opcda, Pyro4, Pyro4.util as u\n"
             "print(sorted(u._serializers), sorted(u._serializers_by_id), Pyro4.config.SERIALIZER)\n"
             "for sid in (2, 3, 4, 5, 6, 7):\n"
             "    try:\n        u.get_serializer_by_id(sid)\n        print('decodes', sid)\n"
             "    except Pyro4.errors.SerializeError:\n        pass\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['serpent'] [1] serpent", out.stdout
    assert "decodes" not in out.stdout


def test_serpent_only_survives_re_registration(pickle_rogue: Any, certs: Path) -> None:
    import Pyro4.util

    from gateway.sources.opcda import Session
    from gateway.sources.opcda_wire import ForeignSerializer

    with pytest.raises(ForeignSerializer):
        Pyro4.util._serializers["pickle"] = Pyro4.util.PickleSerializer()  # type: ignore[attr-defined]
    with pytest.raises(ForeignSerializer):
        Pyro4.util._serializers_by_id.update({4: Pyro4.util.PickleSerializer()})  # type: ignore[attr-defined]
    with pytest.raises(ForeignSerializer):
        Pyro4.util.get_serializer_by_id(4)
    # a library undoing it wholesale: the next session puts serpent-only back before it connects
    saved = Pyro4.util.get_serializer_by_id
    Pyro4.util._serializers_by_id = {4: Pyro4.util.PickleSerializer()}  # type: ignore[attr-defined]
    Pyro4.util.get_serializer_by_id = lambda sid: Pyro4.util._serializers_by_id[sid]  # type: ignore[attr-defined]
    try:
        session = Session(OpcDaConnection(name="da", host="127.0.0.1", port=pickle_rogue.port, server="S",
                                          items=["X"], tls=client_tls(certs), timeout_s=3, connect_timeout_s=3))
        with pytest.raises(Exception) as err:
            session.open_client()
    finally:
        if Pyro4.util.get_serializer_by_id is not saved:
            from gateway.sources.opcda_wire import enforce

            enforce()
    _refused(str(err.value), pickle_rogue)


def test_with_an_hmac_key_an_unsigned_answer_is_refused_before_decoding(pickle_rogue: Any, certs: Path,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "hmac.key"
    key.write_text("Zq7-HMAC-do-not-print\n")
    tls = client_tls(certs)
    code = main(["opcda", "servers", "127.0.0.1", "--port", str(pickle_rogue.port), "--timeout", "3",
                 "--tls-ca", str(tls["ca_file"]), "--tls-cert", str(tls["cert_file"]), "--tls-key",
                 str(tls["key_file"]), "--hmac-key-file", str(key)])
    err = capsys.readouterr().err
    assert code == 1 and pickle_rogue.evil_sent >= 1 and not pickle_rogue.marker.exists()
    assert "HMAC" in err and "hmac_key" in err and "Zq7-HMAC" not in err, err
