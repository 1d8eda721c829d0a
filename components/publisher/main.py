"""factoryedge.Publisher: delivers the streams to the configured destinations with offline buffering."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.componentconfig import PublisherConfig
from gateway.publisher import COMPONENT, Publisher
from gateway.runtime import Context, component_main
from gateway.streams import open_store


async def run(ctx: Context[PublisherConfig]) -> None:
    cfg = ctx.config
    store, positions = open_store(cfg.store)
    sinks = {d.name: (d, d.build()) for d in cfg.destinations if d.enabled}
    publisher = Publisher(
        store, positions, sinks,
        dead_letter_stream=cfg.dead_letter_stream, metrics_stream=cfg.metrics_stream,
        metrics_interval_s=cfg.metrics_interval_s, status_dir=Path(cfg.store.path) / "status",
        status_interval_s=cfg.status_interval_s,
    )
    await publisher.run(ctx.stop)
    store.close()


if __name__ == "__main__":
    sys.exit(component_main(COMPONENT, PublisherConfig, run))
