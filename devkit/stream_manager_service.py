"""Stream manager as a long-running local service: the protocol server of :mod:`devkit.stream_manager_server`
on the embedded store, with a command line, signals and a port file.

Durable like the real service: the streams are files of the embedded store under ``--store``, so a stop and a start
(or a crash) keep every stream and message, and clients of the real SDK reconnect to the same port (the gateway's
stream adapter does so on its own). ``gatewayctl dev run`` runs one in-process; alone::

    python -m devkit.stream_manager_service --store .run/streams --port 8088 --auth-token TOKEN

Clients find it as under Greengrass: ``STREAM_MANAGER_SERVER_PORT`` (default 8088) and
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (one of the ``--auth-token`` values, or anything when none is given).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Iterable
from pathlib import Path

from devkit.stream_manager_server import StreamManagerServer
from gateway.fsutil import atomic_write

log = logging.getLogger(__name__)


class StreamManagerService:
    """A started :class:`StreamManagerServer` whose port is published in ``port_file`` while it runs."""

    def __init__(
        self,
        store: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8088,
        auth_tokens: Iterable[str] | None = None,
        port_file: Path | None = None,
    ) -> None:
        tokens = list(auth_tokens) if auth_tokens is not None else None
        self.server = StreamManagerServer(store, host=host, port=port, auth_token=tokens or None)
        self.port_file = port_file

    @property
    def port(self) -> int:
        """The port listened on."""
        return self.server.port

    async def start(self) -> None:
        """Open the store, listen, write the port file."""
        await self.server.start()
        if self.port_file is not None:
            self.port_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.port_file, f"{self.server.port}\n".encode())

    async def stop(self) -> None:
        """Hang up on every client, close the store, remove the port file."""
        await self.server.stop()
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)


async def _serve(args: argparse.Namespace) -> None:
    service = StreamManagerService(
        args.store, host=args.host, port=args.port, auth_tokens=args.auth_token, port_file=args.port_file
    )
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line: run until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Stream manager protocol server backed by the embedded store.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8088, help="port to listen on; 0 picks a free one")
    parser.add_argument("--store", required=True, help="folder of the streams")
    parser.add_argument("--auth-token", action="append", default=None,
                        help="accept clients whose AWS_CONTAINER_AUTHORIZATION_TOKEN is this; repeatable "
                        "(default: accept any)")
    parser.add_argument("--port-file", type=Path, help="write the port listened on to this file while running")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
