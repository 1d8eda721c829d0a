"""factoryedge.OpcUaCollector: reads OPC UA servers into its stream."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.collector import Collector
from gateway.componentconfig import OpcUaCollectorConfig
from gateway.runtime import Context, component_main
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import open_store

NAME = "factoryedge.OpcUaCollector"


async def run(ctx: Context[OpcUaCollectorConfig]) -> None:
    cfg = ctx.config
    store, _ = open_store(cfg.store)
    collector = Collector(NAME, store, cfg.stream, _source, status_dir=Path(cfg.store.path) / "status",
                          status_interval_s=cfg.status_interval_s)
    await collector.serve(cfg.connections, ctx, lambda new: new.connections)
    store.close()


def _source(conn: OpcUaConnection) -> OpcUaSource:
    return OpcUaSource(conn)


if __name__ == "__main__":
    sys.exit(component_main(NAME, OpcUaCollectorConfig, run))
