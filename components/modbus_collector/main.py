"""factoryedge.ModbusCollector: polls Modbus TCP devices into its stream."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.collector import Collector
from gateway.componentconfig import ModbusCollectorConfig
from gateway.runtime import Context, component_main
from gateway.sources.modbus import ModbusSource
from gateway.sources.modbus_config import ModbusConnection
from gateway.streams import open_store

NAME = "factoryedge.ModbusCollector"


async def run(ctx: Context[ModbusCollectorConfig]) -> None:
    cfg = ctx.config
    store, _ = open_store(cfg.store)
    collector = Collector(NAME, store, cfg.stream, _source, status_dir=Path(cfg.store.path) / "status",
                          status_interval_s=cfg.status_interval_s)
    await collector.serve(cfg.connections, ctx, lambda new: new.connections)
    store.close()


def _source(conn: ModbusConnection) -> ModbusSource:
    return ModbusSource(conn)


if __name__ == "__main__":
    sys.exit(component_main(NAME, ModbusCollectorConfig, run))
