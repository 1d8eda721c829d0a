"""The HTTP server the local AWS fakes run on: 127.0.0.1 only, a thread per request, started and stopped in-process."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LocalHttpServer:
    """Base of the fakes: ``port`` 0 picks a free port; ``endpoint_url`` is what botocore's ``endpoint_url`` takes."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0, name: str = "http-fake") -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._name = name

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, name=self._name, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (``python -m`` entry points)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
