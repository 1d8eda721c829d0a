"""The OPC DA collector against the simulator's OpenOPC gateway (Pyro4), through OpenOPC's own client classes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import OpenOPC
import Pyro4
import pytest

from devkit.faultproxy import FaultProxy
from devkit.peers import Proc, free_port, wait_for
from gateway.componentconfig import OpcDaCollectorConfig
from gateway.config import validate
from gateway.errors import ConfigError
from gateway.record import Quality, Record
from gateway.sources.opcda import diagnose, parse_timestamp, quality_of
from tests.support.opcda import PLAIN, SERVER, Run, opcda_conn
from tests.support.simulator import start_opcda_simulator

# Connections a test asserts never reconnected: a loaded CI machine may stall the simulator past FAST's 1 s.
STEADY = {"timeout_s": 10.0, "connect_timeout_s": 10.0}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One simulator OPC DA endpoint for the tests that only read."""
    proc, port = start_opcda_simulator(tmp_path_factory.mktemp("opcda-sim"))
    yield port
    proc.stop()


def test_values_qualities_timestamps_and_mapping(tmp_path: Path, gateway: int,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.sources.opcda")
    conn = opcda_conn(gateway, items=["Reactor.Pressure"], browse=["Separator.*"],
                      tag_map={"Reactor.Pressure": "/site/area1/tep/reactor/pressure"}, tag_prefix="tep/")
    Pyro4.config.COMMTIMEOUT = 10
    direct = OpenOPC.open_client("127.0.0.1", gateway)
    direct.connect(SERVER)

    async def body() -> tuple[list[Record], list[tuple[float, str]]]:
        run = Run(tmp_path, [conn])
        await run.written(20)
        # what the gateway says right now must arrive as it is: same value, same source timestamp (three tries:
        # the plant may step between our read and the collector's next scan)
        seen = []
        for _ in range(3):
            seen.append(tuple(direct.read("Reactor.Pressure"))[::2])
            await run.more(2)
        return await run.finish(), seen

    records, seen = asyncio.run(body())
    direct.close()
    by_tag: dict[str, list[Record]] = {}
    for r in records:
        by_tag.setdefault(r.tag, []).append(r)
    assert "/site/area1/tep/reactor/pressure" in by_tag and "tep/Separator.Pressure" in by_tag, sorted(by_tag)
    assert all(t == "/site/area1/tep/reactor/pressure" or t.startswith("tep/Separator.") for t in by_tag)
    pressures = by_tag["/site/area1/tep/reactor/pressure"]
    assert all(isinstance(r.value, float) and 2600 < r.value < 2800 for r in pressures)
    assert all(r.quality == Quality.GOOD and r.source == "da" for r in records)
    assert all(0 <= r.gateway_ts_ns - r.source_ts_ns < 60e9 for r in records)
    stamps = {r.source_ts_ns for r in pressures}
    assert any(parse_timestamp(stamp) in stamps for _, stamp in seen), (seen, sorted(stamps)[-3:])
    unencrypted = [m for m in caplog.messages if "UNENCRYPTED and UNAUTHENTICATED" in m]
    assert len(unencrypted) <= 1  # once per process and gateway, not per reconnect (it may have gone earlier)


def test_unknown_items_go_bad_alone_and_the_rest_flows(tmp_path: Path, gateway: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.sources.opcda")
    conn = opcda_conn(gateway, name="unknown",
                      items=["Reactor.Pressure", "Reactor.NoSuchItem", "Reactor.Temperature"],
                      deadband={"heartbeat_s": 0.01}, **STEADY)

    async def body() -> tuple[list[Record], dict[str, Any]]:
        run = Run(tmp_path, [conn])
        await run.written(30, "unknown")
        return await run.finish(), run.collector.status()["connections"]["unknown"]

    records, status = asyncio.run(body())
    bad = [r for r in records if r.tag == "Reactor.NoSuchItem"]
    assert bad and all(r.quality == Quality.BAD and r.value is None for r in bad)
    good = [r for r in records if r.tag != "Reactor.NoSuchItem"]
    assert len(good) >= 10 and all(r.quality == Quality.GOOD for r in good)
    assert status["extra"]["unknown_items"] == ["Reactor.NoSuchItem"] and status["connect_retries"] == 0
    assert any("Reactor.NoSuchItem (The item ID is not defined" in m for m in caplog.messages)


def test_legacy_timestamps_and_host_rewrite_through_a_cut_network(tmp_path: Path) -> None:
    """Old pywin32 timestamps, a gateway handing out 0.0.0.0 proxies, then blackhole and reset on the link."""
    proc, port = start_opcda_simulator(tmp_path, extra=["--opcda-time-format", "legacy",
                                                        "--opcda-report-host", "0.0.0.0"])
    proxy = FaultProxy(port).start()
    cut = opcda_conn(proxy.port, name="cut", items=["Reactor.Pressure", "Reactor.Level"],
                     deadband={"heartbeat_s": 0.01})
    direct = opcda_conn(port, name="direct", items=["Reactor.Pressure"], deadband={"heartbeat_s": 0.01}, **STEADY)

    async def body() -> tuple[list[Record], dict[str, Any]]:
        run = Run(tmp_path, [cut, direct])
        await run.written(10, "cut")
        assert run.counters("cut").extra["proxy_location"] == f"0.0.0.0:{port}"
        assert proxy.connections_accepted >= 2  # the per-client proxy was rewritten to go through our link too
        for fault in (proxy.blackhole, proxy.reset):
            fault()
            await run.until(lambda: not run.counters("cut").connected, f"{fault.__name__} noticed")
            await run.more(5, "direct")  # the other connection keeps flowing meanwhile
            proxy.pass_through()
            await run.more(5, "cut")
        return await run.finish(), run.collector.status()["connections"]

    try:
        records, status = asyncio.run(body())
    finally:
        proxy.stop()
        proc.stop()
    cut_records = [r for r in records if r.source == "cut"]
    good = [r for r in cut_records if r.quality == Quality.GOOD]
    assert good and all(r.source_ts_ns % 1_000_000_000 == 0 for r in good)  # whole seconds: the text was parsed
    assert all(abs(r.gateway_ts_ns - r.source_ts_ns) < 120e9 for r in good)  # read as UTC
    # each cut: every tag BAD, carrying its last value (issue 13 item 9)
    assert sum(r.quality == Quality.BAD and r.value is not None for r in cut_records) >= 4
    assert status["cut"]["connect_retries"] >= 2 and status["direct"]["connect_retries"] == 0


def test_gateway_restart_gets_a_new_client_and_data_resumes(tmp_path: Path) -> None:
    port = free_port()
    procs: list[Proc] = [start_opcda_simulator(tmp_path / "first", port=port)[0]]
    conn = opcda_conn(port, items=["Reactor.Pressure"], deadband={"heartbeat_s": 0.01})

    async def body() -> list[Record]:
        run = Run(tmp_path, [conn])
        await run.written(5)
        procs[0].stop()
        await run.until(lambda: not run.counters().connected, "the gateway going away")
        procs.append((await asyncio.to_thread(start_opcda_simulator, tmp_path / "second", port=port))[0])
        await run.more(5)  # from the restarted gateway
        sessions = await asyncio.to_thread(OpenOPC.get_sessions, "127.0.0.1", port)
        assert len(sessions) == 1  # our new client, created on the new gateway process
        return await run.finish()

    try:
        records = asyncio.run(body())
    finally:
        for proc in procs:
            proc.stop()
    qualities = [r.quality for r in records]
    first_bad = qualities.index(Quality.BAD)
    assert Quality.GOOD in qualities[:first_bad] and Quality.GOOD in qualities[first_bad:]


def test_mutual_tls_and_the_plain_link_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.sources.opcda")
    certs = tmp_path / "certs"
    proc, port = start_opcda_simulator(tmp_path, extra=["--opcda-tls-dir", str(certs)])
    tls = {"ca_file": certs / "ca.pem", "cert_file": certs / "client.pem", "key_file": certs / "client.key"}
    secure = opcda_conn(port, name="secure", items=["Reactor.Pressure"], tls=tls)
    plain = opcda_conn(port, name="plain", items=["Reactor.Pressure"])

    async def body() -> dict[str, Any]:
        run = Run(tmp_path, [secure, plain])
        await run.written(3, "secure")
        await run.until(lambda: run.counters("plain").connect_retries >= 1, "the plain connection to be refused")
        await run.finish()
        status: dict[str, Any] = run.collector.status()["connections"]
        return status

    try:
        status = asyncio.run(body())
        findings = asyncio.run(diagnose(secure, 5))
    finally:
        proc.stop()
    assert status["secure"]["connected"] and status["secure"]["read_errors"] == 0
    assert not status["plain"]["connected"] and status["plain"]["values_written"] == 0
    assert Pyro4.config.SSL is False  # TLS settings are applied while connecting only
    warned = [m for m in caplog.messages if "UNENCRYPTED and UNAUTHENTICATED" in m]
    assert len(warned) == 1 and "connection plain" in warned[0]
    assert {f.check: f.ok for f in findings}["opcda tls"] is True
    assert all(f.ok is not False for f in findings), findings


def test_changed_connection_restarts_alone(tmp_path: Path, gateway: int) -> None:
    a = opcda_conn(gateway, name="a", items=["Reactor.Pressure"], deadband={"heartbeat_s": 0.01})
    b = opcda_conn(gateway, name="b", items=["Reactor.Temperature"], deadband={"heartbeat_s": 0.01}, **STEADY)

    async def body() -> list[Record]:
        run = Run(tmp_path, [a, b])
        await run.written(5, "a")
        await run.written(5, "b")
        task_b = run.collector.connections["b"].task
        await run.collector.apply([a.model_copy(update={"items": ["Reactor.Pressure", "Reactor.Level"]}), b])
        await run.until(lambda: run.counters("a").values_written >= 10, "the changed connection")
        assert run.collector.connections["b"].task is task_b and run.counters("b").connect_retries == 0
        sessions: list[Any] = []

        def two_sessions() -> bool:  # the old client of "a" was closed on the gateway: no session leak
            sessions[:] = OpenOPC.get_sessions("127.0.0.1", gateway)
            return len(sessions) == 2

        await asyncio.to_thread(wait_for, two_sessions, 10, "the old session to be closed on the gateway")
        records = await run.finish()
        await asyncio.to_thread(wait_for, lambda: not OpenOPC.get_sessions("127.0.0.1", gateway), 10, "no session")
        return records

    records = asyncio.run(body())
    assert any(r.source == "a" and r.tag == "Reactor.Level" for r in records)


def test_a_server_the_gateway_cannot_open_is_retried_without_leaking_clients(tmp_path: Path, gateway: int) -> None:
    conn = opcda_conn(gateway, name="wrong", server="Matrikon.OPC.Simulation.1", items=["Random.Real8"])

    async def body() -> tuple[dict[str, Any], list[Any]]:
        run = Run(tmp_path, [conn])
        await run.until(lambda: (c := run.counters("wrong")) is not None and c.connect_retries >= 3, "three attempts")
        sessions = await asyncio.to_thread(OpenOPC.get_sessions, "127.0.0.1", gateway)
        await run.finish()
        return run.collector.status()["connections"]["wrong"], sessions

    status, sessions = asyncio.run(body())
    assert not status["connected"] and "Matrikon.OPC.Simulation.1" in status["last_error"]
    assert "Cannot connect" in status["last_error"]  # the gateway's OPCError text, not a SerializeError
    assert len(sessions) <= 1  # each failed attempt closed its client; at most the one in flight remains


def test_diagnose_names_unknown_items_and_an_unreachable_gateway(gateway: int) -> None:
    findings = asyncio.run(diagnose(opcda_conn(gateway, items=["Reactor.Pressure", "Reactor.NoSuchItem"]), 5))
    verdicts = {f.check: f for f in findings}
    assert verdicts["opcda gateway reachable"].ok and verdicts["opcda pyro ping"].ok
    assert verdicts["opcda tls"].ok is None and "PYRO_SSL" in verdicts["opcda tls"].fix
    assert verdicts["opcda server"].ok and verdicts["opcda first read"].ok
    unknown = verdicts["opcda unknown items"]
    assert unknown.ok is False and "Reactor.NoSuchItem" in unknown.detail
    wrong_server = asyncio.run(diagnose(opcda_conn(gateway, items=["X"], server="Matrikon.OPC.Simulation.1"), 5))
    assert wrong_server[-1].ok is False and SERVER in wrong_server[-1].detail  # the offered servers are named
    no_match = {f.check: f for f in asyncio.run(diagnose(opcda_conn(gateway, browse=["Nothing.*"]), 5))}
    assert no_match["opcda server"].ok and no_match["opcda first read"].ok is False
    assert "Nothing.*" in no_match["opcda first read"].detail
    down = asyncio.run(diagnose(opcda_conn(free_port(), items=["X"]), 2))
    assert len(down) == 1 and down[0].ok is False and "OpenOPC Gateway Service" in down[0].fix


def test_config_errors_name_the_field() -> None:
    data = {"connections": [
        {"name": "ok", "host": "h", "server": "S", "items": ["A"], **PLAIN},
        {"name": "bad", "host": "h", "server": "S", "port": 0, "items": ["A"], "naive_timestamp_tz": "Mars/Base",
         "tls": {"ca_file": "ca.pem", "cert_file": "c.pem"}, "timeout_s": 0},
        {"name": "empty", "host": "h", "server": "S", **PLAIN},
    ]}
    with pytest.raises(ConfigError) as err:
        validate(OpcDaCollectorConfig, data, origin="opcda.yaml")
    text = str(err.value)
    for field in ("connections.1.port", "connections.1.naive_timestamp_tz", "connections.1.tls",
                  "connections.1.timeout_s", "connections.2"):
        assert field in text, text
    assert "Mars/Base" in text and "key_file" in text and "browse" in text
    assert OpcDaCollectorConfig().stream.name == "factoryedge-opcda"
    assert "connections.0" not in text


def test_a_link_without_tls_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        validate(OpcDaCollectorConfig, {"connections": [{"name": "da", "host": "h", "server": "S", "items": ["A"]}]},
                 origin="opcda.yaml")
    (problem,) = err.value.problems
    assert problem.startswith("connections.0.tls") and "unencrypted" in problem and "allow_plaintext: true" in problem
    assert "\n" not in problem
    allowed = validate(OpcDaCollectorConfig, {"connections": [{"name": "da", "host": "h", "server": "S",
                                                               "items": ["A"], "allow_plaintext": True}]},
                       origin="opcda.yaml")
    assert allowed.connections[0].tls is None and allowed.connections[0].hmac_key is None


def test_hmac_key_of_the_gateway(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway with an HMAC key: the right key reads, a wrong or missing one is refused naming hmac_key only."""
    caplog.set_level(logging.DEBUG)
    secret = "Zq7-HMAC-S3CRET"
    key_file = tmp_path / "hmac.key"
    key_file.write_text(secret + "\n")
    proc, port = start_opcda_simulator(tmp_path, extra=["--opcda-hmac-key-file", str(key_file)])
    signed = opcda_conn(port, name="signed", items=["Reactor.Pressure"], hmac_key=secret, **STEADY)
    wrong = opcda_conn(port, name="wrong", items=["Reactor.Pressure"], hmac_key="not-the-key")
    unsigned = opcda_conn(port, name="unsigned", items=["Reactor.Pressure"])

    async def body() -> dict[str, Any]:
        run = Run(tmp_path, [signed, wrong, unsigned])
        await run.written(3, "signed")
        await run.until(lambda: run.counters("wrong").connect_retries >= 1
                        and run.counters("unsigned").connect_retries >= 1,
                        "the connections without the right key to be refused")
        await run.finish()
        status: dict[str, Any] = run.collector.status()["connections"]
        return status

    try:
        status = asyncio.run(body())
        findings = {f.check: f for f in asyncio.run(diagnose(wrong, 5))}
    finally:
        proc.stop()
    assert status["signed"]["connected"] and status["signed"]["read_errors"] == 0
    for name in ("wrong", "unsigned"):
        assert not status[name]["connected"] and status[name]["values_written"] == 0
        assert "hmac_key" in status[name]["last_error"], status[name]["last_error"]
    assert findings["opcda pyro ping"].ok is False and "hmac_key" in findings["opcda pyro ping"].detail
    assert secret not in repr(signed) and secret not in json.dumps(status) and secret not in caplog.text


def test_timestamp_and_quality_mapping() -> None:
    utc = datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)
    ns = 1714557600_123_000_000
    assert int(utc.timestamp()) * 10**9 + 123_000_000 == ns
    assert parse_timestamp("2024-05-01 10:00:00.123000+00:00") == ns
    assert parse_timestamp("2024-05-01 12:00:00.123000+02:00") == ns
    assert parse_timestamp("05/01/24 10:00:00") == ns - 123_000_000
    assert parse_timestamp("05/01/2024 10:00:00") == ns - 123_000_000
    assert parse_timestamp(None) is None and parse_timestamp("yesterday") is None
    assert [quality_of(q) for q in ("Good", "Uncertain", "Bad", "Unknown", "Error", None)] == [
        Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD, Quality.BAD, Quality.BAD]
