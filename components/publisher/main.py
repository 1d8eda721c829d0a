"""factoryedge.Publisher: delivers the streams to the configured destinations with offline buffering."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from gateway.componentconfig import PublisherConfig
from gateway.destinations.registry import make_sink
from gateway.publisher import COMPONENT, Publisher
from gateway.runtime import Context, component_main
from gateway.streams import open_store


def fewer_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas.

    glibc gives each thread that allocates its own arena and keeps freed pages there. The publisher's worker threads
    (a reader per pump, the AWS call pools) each decode and encode whole batches, so after a backlog drain every
    arena holds a batch worth of freed memory. A process that mostly waits on the network needs only a couple.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


async def run(ctx: Context[PublisherConfig]) -> None:
    cfg = ctx.config
    store, positions = open_store(cfg.store)
    sinks = {d.name: (d, make_sink(d)) for d in cfg.destinations if d.enabled}
    publisher = Publisher(
        store, positions, sinks,
        dead_letter_stream=cfg.dead_letter_stream, metrics_stream=cfg.metrics_stream,
        metrics_interval_s=cfg.metrics_interval_s, status_dir=Path(cfg.store.path) / "status",
        status_interval_s=cfg.status_interval_s,
    )
    await publisher.run(ctx.stop)
    store.close()


if __name__ == "__main__":
    fewer_malloc_arenas()
    sys.exit(component_main(COMPONENT, PublisherConfig, run))
