"""factoryedge.OpcDaCollector: reads OPC DA servers through OpenOPC gateway services into its stream."""

from __future__ import annotations

import sys

from gateway.collector import collector_runner
from gateway.componentconfig import OpcDaCollectorConfig
from gateway.runtime import component_main
from gateway.sources.opcda import OpcDaSource

NAME = "factoryedge.OpcDaCollector"

if __name__ == "__main__":
    sys.exit(component_main(NAME, OpcDaCollectorConfig, collector_runner(NAME, OpcDaSource)))
