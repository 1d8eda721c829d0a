"""Local stand-ins for the Greengrass nucleus, used by tests and ``gatewayctl dev run``."""
