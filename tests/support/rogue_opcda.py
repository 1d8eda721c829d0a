"""A rogue OpenOPC gateway (issue 12 item 1): a raw TCP server written against Pyro4's wire format, not Pyro4 itself.

It speaks mutual TLS with certificates our CA signed (a compromised or impersonated gateway holds exactly such a
certificate) and answers like an OpenOPC gateway until a chosen stage (the connect handshake, CONNECTOK or
CONNECTFAIL; a later call; a later call flagged as an exception; calls on the per-client object it hands out), then
with a message whose header names a foreign serializer (pickle, marshal, json, dill, cloudpickle or msgpack). For the
pickle family the payload creates a marker folder when decoded: a client that decodes it runs the rogue's code.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from pathlib import Path

import serpent  # type: ignore[import-untyped]

from simulator.opcda_server import ensure_tls_files

# Pyro4 wire format (Pyro4/message.py): header '!4sHHHHiHHHH' = tag, version 48, type, flags, seq, data size,
# serializer id, annotations size, reserved, checksum.
HEADER = struct.Struct("!4sHHHHiHHHH")
VERSION, MAGIC = 48, 0x34E9
CONNECT, CONNECTOK, CONNECTFAIL, INVOKE, RESULT = 1, 2, 3, 4, 5
EXCEPTION, META_ON_CONNECT = 1, 16
SERPENT = 1
FOREIGN = {"json": 2, "marshal": 3, "pickle": 4, "dill": 5, "msgpack": 6, "cloudpickle": 7}
STAGES = ("connectok", "connectfail", "result", "exception", "client-object")


def _payload(serializer: str, marker: Path) -> bytes:
    """What the rogue sends: for the pickle family, protocol-0 opcodes calling os.mkdir(marker) when decoded."""
    if serializer in ("pickle", "dill", "cloudpickle"):  # written out by hand: this project never imports pickle
        return b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR."
    return {"json": b'"hello"', "marshal": b"z\x05hello", "msgpack": b"\xa5hello"}[serializer]


def _frame(msg_type: int, data: bytes, sid: int, flags: int, seq: int) -> bytes:
    checksum = (msg_type + VERSION + len(data) + flags + sid + seq + MAGIC) & 0xFFFF
    return HEADER.pack(b"PYRO", VERSION, msg_type, flags, seq, len(data), sid, 0, 0, checksum) + data


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


class RogueGateway:
    """Answers like an OpenOPC gateway until ``stage``, then with ``serializer``'s id and payload."""

    def __init__(self, certs: Path, serializer: str, stage: str, marker: Path) -> None:
        server_cert, server_key, ca = ensure_tls_files(certs)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(server_cert, server_key)
        self.ctx.load_verify_locations(ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sid, self.evil, self.stage = FOREIGN[serializer], _payload(serializer, marker), stage
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.evil_sent = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(raw,), daemon=True).start()

    def _session(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                while True:
                    (_, _, msg_type, _, seq, size, _, anns, _, _) = HEADER.unpack(_recv(conn, HEADER.size))
                    data = _recv(conn, anns + size)[anns:]
                    conn.sendall(self._answer(msg_type, seq, data))
        except (OSError, ConnectionError, ssl.SSLError, struct.error):
            return  # the client gave up, as it should

    def _evil(self, msg_type: int, seq: int, flags: int = 0) -> bytes:
        self.evil_sent += 1
        return _frame(msg_type, self.evil, self.sid, flags, seq)

    def _answer(self, msg_type: int, seq: int, data: bytes) -> bytes:
        if msg_type == CONNECT:
            if self.stage in ("connectok", "connectfail"):
                return self._evil(CONNECTOK if self.stage == "connectok" else CONNECTFAIL, seq)
            methods = ["create_client", "ping", "servers", "connect", "list", "read", "close", "info", "get_metadata"]
            ok = serpent.dumps({"handshake": "hello", "meta": {"methods": methods, "oneway": [], "attrs": []}})
            return _frame(CONNECTOK, ok, SERPENT, META_ON_CONNECT, seq)
        obj, method = serpent.loads(data)[:2]
        if self.stage == "client-object" and (obj, method) == ("opc", "create_client"):
            # a per-client proxy that asks to be spoken to in pickle (its serializer is part of its state)
            uri = f"PYRO:client-1@127.0.0.1:{self.port}"
            state = (uri, (), ("servers", "connect", "list", "read", "close"), (), 0.0, None, "hello", 0, "pickle")
            proxy = serpent.dumps({"__class__": "Pyro4.core.Proxy", "state": state})
            return _frame(RESULT, proxy, SERPENT, 0, seq)
        return self._evil(RESULT, seq, EXCEPTION if self.stage == "exception" else 0)

    def stop(self) -> None:
        self.sock.close()


def client_tls(certs: Path) -> dict[str, Path]:
    """The client side of the TLS files ``ensure_tls_files(certs)`` wrote: CA, certificate and key."""
    return {"ca_file": certs / "ca.pem", "cert_file": certs / "client.pem", "key_file": certs / "client.key"}
