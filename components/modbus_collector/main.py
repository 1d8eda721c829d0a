"""factoryedge.ModbusCollector: polls Modbus TCP devices into its stream."""

from __future__ import annotations

import sys

from gateway.collector import collector_runner
from gateway.componentconfig import ModbusCollectorConfig
from gateway.runtime import component_main
from gateway.sources.modbus import ModbusSource

NAME = "factoryedge.ModbusCollector"

if __name__ == "__main__":
    sys.exit(component_main(NAME, ModbusCollectorConfig, collector_runner(NAME, ModbusSource)))
