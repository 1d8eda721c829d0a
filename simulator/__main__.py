"""``python -m simulator``: see :mod:`simulator.cli`."""

import sys

from simulator.cli import main

if __name__ == "__main__":  # the plant process is spawned and imports this module under another name
    sys.exit(main())
