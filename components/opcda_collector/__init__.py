"""factoryedge.OpcDaCollector: reads OPC DA servers through OpenOPC gateway services into its stream."""
