"""factoryedge.OpcUaCollector: reads OPC UA servers into its stream."""

from __future__ import annotations

import sys

from gateway.collector import collector_runner
from gateway.componentconfig import OpcUaCollectorConfig
from gateway.runtime import component_main
from gateway.sources.opcua import OpcUaSource

NAME = "factoryedge.OpcUaCollector"

if __name__ == "__main__":
    sys.exit(component_main(NAME, OpcUaCollectorConfig, collector_runner(NAME, OpcUaSource)))
