"""Entry point of factoryedge.OpcUaCollector.

OPC UA collector: reads OPC UA nodes into a local stream.
Generated from gateway/components.py by tools/gg_templates.py: change those, not this file.
"""

import sys

from gateway.entry import entry_point

main = entry_point("factoryedge.OpcUaCollector")  # imports what it runs: the build checks that from the zip

if __name__ == "__main__":
    sys.exit(main())
