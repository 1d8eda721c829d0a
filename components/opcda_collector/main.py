"""factoryedge.OpcDaCollector: reads OPC DA servers through OpenOPC gateway services into its stream."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.collector import Collector
from gateway.componentconfig import OpcDaCollectorConfig
from gateway.runtime import Context, component_main
from gateway.sources.opcda import OpcDaSource
from gateway.sources.opcda_config import OpcDaConnection
from gateway.streams import open_store

NAME = "factoryedge.OpcDaCollector"


async def run(ctx: Context[OpcDaCollectorConfig]) -> None:
    cfg = ctx.config
    store, _ = open_store(cfg.store)
    collector = Collector(NAME, store, cfg.stream, _source, status_dir=Path(cfg.store.path) / "status",
                          status_interval_s=cfg.status_interval_s)
    await collector.serve(cfg.connections, ctx, lambda new: new.connections)
    store.close()


def _source(conn: OpcDaConnection) -> OpcDaSource:
    return OpcDaSource(conn)


if __name__ == "__main__":
    sys.exit(component_main(NAME, OpcDaCollectorConfig, run))
