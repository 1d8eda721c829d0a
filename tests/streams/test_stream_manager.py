"""Stream manager through the real SDK: start-up, restarts, the SDK's timeout defect, auth, and the wire protocol."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import stream_manager as sm
from stream_manager.data import Operation

from devkit.peers import free_port, wait_for
from gateway.errors import StreamError, StreamUnavailable
from gateway.streams import StrategyOnFull, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from gateway.streams.stream_manager import StreamManagerStore
from tests.support.stream_manager import ServerThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    runner = ServerThread(tmp_path / "sm")
    runner.start()
    yield runner
    runner.close()


def open_store(port: int, **kw: Any) -> StreamManagerStore:
    kw.setdefault("connect_timeout_s", 10.0)
    return StreamManagerStore("127.0.0.1", port, **kw)


def test_start_up_waits_for_a_server_that_starts_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.streams.stream_manager")
    port = free_port()
    made: dict[str, Any] = {}

    def connect() -> None:
        try:
            made["store"] = open_store(port, connect_timeout_s=30)
        except StreamError as exc:
            made["error"] = exc

    connecting = threading.Thread(target=connect)
    connecting.start()
    wait_for(lambda: any("not reachable yet" in r.getMessage() for r in caplog.records), what="a failed attempt")
    runner = ServerThread(tmp_path / "sm", port=port)
    try:
        runner.start()
        connecting.join(30)
        assert "error" not in made
        store = made["store"]
        store.create_stream(StreamSpec(name="s"))
        assert store.append("s", b"x") == 0
        store.close()
    finally:
        runner.close()


def test_server_down_past_the_timeout_names_the_fix() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StreamUnavailable) as err:
        open_store(port, connect_timeout_s=0.5)
    assert time.monotonic() - t0 >= 0.5
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text
    assert "aws.greengrass.StreamManager" in text and "STREAM_MANAGER_SERVER_PORT" in text
    assert err.value.retryable


def test_server_restart_mid_run_reconnects_and_keeps_the_data(server: ServerThread) -> None:
    store = open_store(server.port, request_timeout_s=2.0)
    store.create_stream(StreamSpec(name="s"))
    before = [store.append("s", f"before-{i}".encode()) for i in range(5)]

    server.stop()
    with pytest.raises(StreamUnavailable) as err:  # a call while the server is down fails fast and retryably
        store.append("s", b"lost")
    assert err.value.retryable
    server.start()  # same port, same store folder

    assert store.append("s", b"after") == 5
    assert [m.payload for m in store.read("s", 0, max_count=100)] == [
        *(f"before-{i}".encode() for i in range(5)), b"after"]
    assert before == list(range(5))
    assert store.reconnects >= 1

    server.stop()  # restarted while idle: the next call just works
    server.start()
    assert store.describe("s").next_seq == 6
    store.close()


def test_a_late_response_does_not_break_later_calls(server: ServerThread) -> None:
    store = open_store(server.port, request_timeout_s=0.5)
    store.create_stream(StreamSpec(name="s"))
    store.append("s", b"a")
    server.server.hold_responses(Operation.ReadMessages.value, seconds=1.5)

    assert [m.payload for m in store.read("s", 0)] == [b"a"]  # timed out once, answered on a new client
    assert store.reconnects == 1
    for i in range(20):
        assert store.append("s", b"b") == i + 1
    assert len(store.read("s", 0, max_count=100)) == 21
    store.close()


def test_the_sdk_defect_we_work_around_still_exists(server: ServerThread) -> None:
    """If this fails, the SDK got fixed: the client replacement in the adapter may then be simplified."""
    client = sm.StreamManagerClient(port=server.port, request_timeout=0.5)
    try:
        server.server.hold_responses(Operation.ListStreams.value, seconds=1.0)
        with pytest.raises(TimeoutError):
            client.list_streams()
        wait_for(lambda: server.server.held_responses == 1, what="the late response")
        with pytest.raises(TimeoutError):  # the late response killed the read loop: nothing is answered any more
            client.list_streams()
    finally:
        client.close()


def test_a_wrong_auth_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ServerThread(tmp_path / "sm", auth_token="right-token")
    try:
        port = runner.start()
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-token")
        t0 = time.monotonic()
        with pytest.raises(StreamUnavailable, match="handshake") as err:
            open_store(port, connect_timeout_s=30)
        assert time.monotonic() - t0 < 15  # refused, so not retried until the connect timeout
        assert not err.value.retryable
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" in str(err.value)

        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "right-token")
        store = open_store(port)
        assert store.list_streams() == []
        store.close()
    finally:
        runner.close()


def test_definitions_round_trip(server: ServerThread) -> None:
    store = open_store(server.port)
    spec = StreamSpec(name="s", max_size_bytes=4096, segment_size_bytes=2048, ttl_s=120.0,
                      strategy_on_full=StrategyOnFull.REJECT_NEW_DATA, flush_on_write=False)
    store.create_stream(spec)
    assert store.describe("s").spec == spec
    updated = spec.model_copy(update={"max_size_bytes": 8192})
    store.create_stream(updated)
    assert store.describe("s").spec == updated
    store.close()


def test_export_definitions_are_accepted_and_ignored(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    client = sm.StreamManagerClient(port=server.port)
    try:
        client.create_message_stream(sm.MessageStreamDefinition(
            name="exported", strategy_on_full=sm.StrategyOnFull.OverwriteOldestData,
            export_definition=sm.ExportDefinition(kinesis=[sm.KinesisConfig(identifier="k", kinesis_stream_name="x")]),
        ))
        assert client.append_message("exported", b"x") == 0
    finally:
        client.close()
    assert any("export definitions are ignored" in r.getMessage() for r in caplog.records)


def test_waiting_reads_do_not_hold_up_appends(tmp_path: Path) -> None:
    runner = ServerThread(tmp_path / "sm", workers=2)  # fewer store threads than waiting reads
    try:
        store = open_store(runner.start())
        store.create_stream(StreamSpec(name="s"))
        got: list[list[bytes]] = []

        def reader() -> None:
            got.append([m.payload for m in store.read("s", 0, timeout_s=20)])

        readers = [threading.Thread(target=reader) for _ in range(6)]
        for th in readers:
            th.start()
        wait_for(lambda: runner.server.waiting_reads == 6, what="six parked reads")
        store.append("s", b"wake")
        for th in readers:
            th.join(30)
        assert got == [[b"wake"]] * 6
        store.close()
    finally:
        runner.close()


def _frame(op: int, body: dict[str, Any]) -> bytes:
    payload = cbor2.dumps(body)
    return struct.pack(">iB", len(payload) + 1, op) + payload


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "server hung up"
        out += chunk
    return out


def _recv_frame(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    length, op = struct.unpack(">iB", _recv(sock, 5))
    return op, cbor2.loads(_recv(sock, length - 1))


def test_wire_protocol_handshake_and_unknown_operation(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x01" + _frame(1, {"requestId": "c1", "protocolVersion": "1.1.0", "sdkVersion": "test"}))
        assert _recv(sock, 1) == b"\x01"
        op, body = _recv_frame(sock)
        assert (op, body["requestId"], body["status"], body["protocolVersion"]) == (6, "c1", 0, "1.1.0")
        sock.sendall(_frame(99, {"requestId": "r1"}))
        op, body = _recv_frame(sock)
        assert (op, body["requestId"], body["status"]) == (17, "r1", 18)
        sock.sendall(_frame(11, {"requestId": "r2"}))  # the connection still serves requests
        op, body = _recv_frame(sock)
        assert (op, body["requestId"], body["status"]) == (12, "r2", 0)


def test_command_line_server_is_durable_on_the_embedded_store(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devkit.stream_manager_service", "--port", str(port), "--store", str(tmp_path)],
        cwd=ROOT,
    )
    try:
        store = open_store(port, connect_timeout_s=30)  # start-up retry covers the interpreter starting
        store.create_stream(StreamSpec(name="s"))
        assert store.append("s", b"kept") == 0
        store.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert [m.payload for m in EmbeddedStore(tmp_path).read("s", 0)] == [b"kept"]
