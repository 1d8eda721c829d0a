"""Entry point of factoryedge.Publisher.

Publisher: forwards streams to AWS IoT Core, Kinesis, SiteWise and MQTT brokers.
Generated from gateway/components.py by tools/gg_templates.py: change those, not this file.
"""

import sys

from gateway.entry import entry_point

main = entry_point("factoryedge.Publisher")  # imports what it runs: the build checks that from the zip

if __name__ == "__main__":
    sys.exit(main())
