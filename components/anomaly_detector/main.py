"""factoryedge.AnomalyDetector: scores tag groups of the collectors' streams with random cut forests.

The wiring lives in :mod:`gateway.anomaly.component`; this entry point only hands it to the shared runtime.
"""

from __future__ import annotations

import sys

from gateway.anomaly.component import run
from gateway.anomaly.engine import COMPONENT
from gateway.componentconfig import AnomalyDetectorConfig
from gateway.runtime import component_main

if __name__ == "__main__":
    sys.exit(component_main(COMPONENT, AnomalyDetectorConfig, run))
