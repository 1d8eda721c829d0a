"""A TCP proxy for network-fault tests: pass, blackhole, reset or refuse, switched at run time.

The faults are the ones a site link actually has:

- ``blackhole``: a cut cable or a dropped VPN. Open connections stay open but nothing moves either way; the bytes
  wait in the socket buffers, as TCP would keep retransmitting them. New connections are left in the listen
  backlog, unanswered. Only the applications' own timeouts and keepalives can notice. After ``pass_through`` the
  held bytes flow again, as after a short real outage.
- ``reset``: a firewall or NAT that forgot the flow. Every open connection gets an RST, and so does every new one.
- ``refuse``: the host is up but the service is down. The listening socket is closed (connection refused), open
  connections get an RST. ``pass_through`` listens again on the same port.

One thread, one selector, non-blocking sockets; bound to 127.0.0.1 only. Use in-process from tests
(``FaultProxy(port).start()``) or as ``python -m devkit.faultproxy --target 127.0.0.1:1883`` with the mode
read line by line from standard input.
"""

from __future__ import annotations

import argparse
import logging
import selectors
import socket
import struct
import sys
import threading
from typing import Literal

from gateway.endpoints import host_port

log = logging.getLogger(__name__)

Mode = Literal["pass", "blackhole", "reset", "refuse"]
CHUNK = 65536
MAX_BUFFERED = 4 * 1024 * 1024  # per direction; reading pauses above it (back-pressure, like TCP)


class _Pipe:
    """One proxied connection: the client's socket and ours to the target, each with bytes waiting to be sent."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.out: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.connected = False  # upstream connect completed

    def other(self, s: socket.socket) -> socket.socket:
        return self.upstream if s is self.client else self.client


def _rst(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port`` with switchable faults."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.mode: Mode = "pass"
        self.connections_accepted = 0
        self.bytes_forwarded = 0
        self._sel = selectors.DefaultSelector()
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._wanted: Mode = "pass"
        self._stop = False
        self._applied: threading.Event | None = None
        self._thread = threading.Thread(target=self._loop, name="faultproxy", daemon=True)

    # -- control (any thread) ---------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def pass_through(self) -> None:
        self._set("pass")

    def blackhole(self) -> None:
        self._set("blackhole")

    def reset(self) -> None:
        self._set("reset")

    def refuse(self) -> None:
        self._set("refuse")

    def stop(self) -> None:
        with self._lock:
            self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)

    def _set(self, mode: Mode) -> None:
        done = threading.Event()
        with self._lock:
            self._wanted = mode
            self._applied = done
        self._wake_w.send(b"x")
        # Return only once the loop applied it, so a test's next step sees the fault in force.
        if not done.wait(5):
            raise TimeoutError(f"fault proxy did not switch to {mode}")

    # -- the loop (proxy thread only) -------------------------------------------------------------------------------

    def _listen(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        ls.setblocking(False)
        self.port = ls.getsockname()[1]
        self._listener = ls

    def _loop(self) -> None:
        assert self._listener is not None
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        while True:
            for key, events in self._sel.select(timeout=1.0):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.data == "listen":
                    self._accept()
                else:
                    self._io(key.fileobj, events)  # type: ignore[arg-type]
            with self._lock:
                stop, wanted = self._stop, self._wanted
                applied = self._applied
            if stop:
                self._close_all(rst=False)
                return
            if wanted != self.mode:
                self._apply(wanted)
            if applied is not None and not applied.is_set():
                applied.set()

    def _apply(self, mode: Mode) -> None:
        old, self.mode = self.mode, mode
        log.info("fault proxy :%d %s -> %s", self.port, old, mode)
        if mode in ("reset", "refuse"):
            self._close_all(rst=True)
        if mode == "refuse" and self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        if old == "refuse" and mode != "refuse":
            self._listen()
            assert self._listener is not None
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        if old == "blackhole" or mode == "blackhole":
            for s in list(self._pipes):
                self._interest(s)

    def _accept(self) -> None:
        if self.mode == "blackhole" or self._listener is None:
            return  # left in the backlog, unanswered, until the link comes back
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.connections_accepted += 1
        if self.mode == "reset":
            _rst(client)
            return
        client.setblocking(False)
        upstream = socket.socket()
        upstream.setblocking(False)
        upstream.connect_ex(self.target)
        pipe = _Pipe(client, upstream)
        self._pipes[client] = self._pipes[upstream] = pipe
        self._sel.register(client, selectors.EVENT_READ, "io")
        self._sel.register(upstream, selectors.EVENT_WRITE, "io")  # writable = connect finished

    def _interest(self, s: socket.socket) -> None:
        pipe = self._pipes.get(s)
        if pipe is None:
            return
        ev = 0
        if self.mode != "blackhole":
            if (s is pipe.client or pipe.connected) and len(pipe.out[pipe.other(s)]) < MAX_BUFFERED:
                ev |= selectors.EVENT_READ
            if pipe.out[s] or (s is pipe.upstream and not pipe.connected):
                ev |= selectors.EVENT_WRITE
        try:
            if ev:
                self._sel.modify(s, ev, "io")
            else:
                self._sel.unregister(s)
        except KeyError:
            if ev:
                self._sel.register(s, ev, "io")

    def _io(self, s: socket.socket, events: int) -> None:
        pipe = self._pipes.get(s)
        if pipe is None or self.mode == "blackhole":
            return
        if s is pipe.upstream and not pipe.connected:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop(pipe, rst=True)  # target down: the client sees a reset, as through a real router
                return
            pipe.connected = True
        try:
            if events & selectors.EVENT_READ:
                data = s.recv(CHUNK)
                if not data:
                    self._drop(pipe, rst=False)
                    return
                pipe.out[pipe.other(s)] += data
            self._flush(pipe, pipe.client)
            self._flush(pipe, pipe.upstream)
        except OSError:
            self._drop(pipe, rst=True)
            return
        self._interest(pipe.client)
        self._interest(pipe.upstream)

    def _flush(self, pipe: _Pipe, s: socket.socket) -> None:
        if pipe.out[s] and (s is pipe.client or pipe.connected):
            try:
                sent = s.send(pipe.out[s])
            except (BlockingIOError, InterruptedError):
                return
            self.bytes_forwarded += sent
            del pipe.out[s][:sent]

    def _drop(self, pipe: _Pipe, *, rst: bool) -> None:
        for s in (pipe.client, pipe.upstream):
            self._pipes.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if rst:
                _rst(s)
            else:
                s.close()

    def _close_all(self, *, rst: bool) -> None:
        for pipe in {id(p): p for p in self._pipes.values()}.values():
            self._drop(pipe, rst=rst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="TCP fault proxy on 127.0.0.1; modes read from stdin, one per line.")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--port", type=int, default=0, help="listen port (0: any free port)")
    args = ap.parse_args(argv)
    host, port = host_port(args.target, what="--target", default_host="127.0.0.1")
    proxy = FaultProxy(port, host, args.port).start()
    print(f"READY 127.0.0.1:{proxy.port}", flush=True)
    actions = {"pass": proxy.pass_through, "blackhole": proxy.blackhole, "reset": proxy.reset, "refuse": proxy.refuse}
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in actions:
            actions[cmd]()
            print(f"MODE {cmd}", flush=True)
        elif cmd:
            print(f"unknown mode {cmd!r}: use one of {', '.join(actions)}", file=sys.stderr, flush=True)
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
