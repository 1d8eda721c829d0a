"""The fault proxy other tests rely on: each mode does to a real TCP peer what it says."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from devkit.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the reset tests reset the upstream side too


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = FaultProxy(server.server_address[1]).start()
    yield p
    p.stop()
    server.shutdown()
    server.server_close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_pass_forwards_both_ways_including_large_payloads(proxy: FaultProxy) -> None:
    s = _connect(proxy.port)
    payload = bytes(range(256)) * 40_000  # 10 MB: exercises the back-pressure path
    threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
    assert _recv_exact(s, len(payload)) == payload
    s.close()


def test_blackhole_holds_bytes_and_delivers_them_after_the_link_returns(proxy: FaultProxy) -> None:
    s = _connect(proxy.port)
    s.sendall(b"before")
    assert _recv_exact(s, 6) == b"before"
    proxy.blackhole()
    s.sendall(b"during")
    s.settimeout(0.5)
    with pytest.raises(TimeoutError):
        s.recv(10)  # nothing moves while the link is cut
    proxy.pass_through()
    s.settimeout(5)
    assert _recv_exact(s, 6) == b"during"  # as TCP retransmission would deliver it


def test_reset_sends_rst_to_open_and_new_connections(proxy: FaultProxy) -> None:
    s = _connect(proxy.port)
    s.sendall(b"x")
    assert _recv_exact(s, 1) == b"x"
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        s.sendall(b"y")
        s.recv(1)
    with pytest.raises(ConnectionResetError):  # the RST may beat connect() returning, or come at the first read
        late = _connect(proxy.port)
        late.sendall(b"z")
        late.recv(1)
    proxy.pass_through()
    again = _connect(proxy.port)
    again.sendall(b"ok")
    assert _recv_exact(again, 2) == b"ok"


def test_refuse_closes_the_port_and_pass_reopens_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    proxy.pass_through()
    assert proxy.port == port
    s = _connect(port)
    s.sendall(b"back")
    assert _recv_exact(s, 4) == b"back"


def test_target_down_is_a_reset_for_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    p = FaultProxy(dead_port).start()
    try:
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):  # at connect() or at the first read
            s = _connect(p.port)
            s.sendall(b"x")
            if not s.recv(1):
                raise ConnectionAbortedError("closed")
    finally:
        p.stop()
