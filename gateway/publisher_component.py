"""factoryedge.Publisher: the wiring of :class:`gateway.publisher.Publisher` for the shared runtime.

Opens the store, builds the enabled destinations and delivers until stopped; ``components/publisher/main.py`` runs
it through :func:`gateway.components.entry_point`, like every component.
"""

from __future__ import annotations

from pathlib import Path

from gateway.componentconfig import PublisherConfig
from gateway.publisher import Publisher
from gateway.runtime import Context
from gateway.streams import open_store


async def run(ctx: Context[PublisherConfig]) -> None:
    """The component's ``run`` for :func:`gateway.runtime.component_main`."""
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
