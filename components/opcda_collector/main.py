"""Entry point of factoryedge.OpcDaCollector.

OPC DA collector (through the OpenOPC gateway service): reads tags into a local stream.
Generated from gateway/components.py by tools/gg_templates.py: change those, not this file.
"""

import sys

from gateway.entry import entry_point

main = entry_point("factoryedge.OpcDaCollector")  # imports what it runs: the build checks that from the zip

if __name__ == "__main__":
    sys.exit(main())
