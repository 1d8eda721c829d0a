"""Stream manager for tests: our protocol server on its own event loop, and the real SDK through our adapter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.stream_manager_server import StreamManagerServer
from gateway.streams.base import StreamStore
from gateway.streams.stream_manager import StreamManagerStore

START_TIMEOUT_S = 10.0


class ServerThread:
    """A :class:`StreamManagerServer` on an event loop of its own in a daemon thread, for synchronous callers."""

    def __init__(self, store_root: Path, **options: Any) -> None:
        self.server = StreamManagerServer(store_root, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sm-server-loop", daemon=True)
        self._thread.start()
        self.running = False

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> int:
        """Start (or restart, on the same port) the server; return its port."""
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(START_TIMEOUT_S)
        self.running = True
        return self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(START_TIMEOUT_S)
        self.running = False

    def close(self) -> None:
        """Stop the server and end its thread."""
        if self.running:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()


def stream_manager_factory(tmp: Path) -> tuple[StreamStore, Callable[[], None]]:
    """A StreamManagerStore connected to a fresh server whose streams live under ``tmp / "sm-server"``."""
    runner = ServerThread(tmp / "sm-server")
    try:
        port = runner.start()
        store = StreamManagerStore("127.0.0.1", port, connect_timeout_s=START_TIMEOUT_S)
    except BaseException:
        runner.close()
        raise

    def cleanup() -> None:
        store.close()
        runner.close()

    return store, cleanup
