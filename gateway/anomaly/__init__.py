"""Random cut forest anomaly scoring: tag groups -> whitened, shingled vectors -> forest -> scores and alarms.

Public API (what the component and ``gatewayctl`` use):

- :class:`AnomalyConfig`, :class:`TagGroup`, :class:`ForestSettings`, :func:`load_config` (config models)
- :class:`Detector` (records in, score/alarm records out, persistence)
- :class:`VectorAssembler`, :class:`GroupModel`, :class:`StepResult` (building blocks, for tests and tools)
- :mod:`gateway.anomaly.offline` (fit / score / status on CSV history), :func:`register` (the CLI)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.anomaly.assembler import Shingler, Vector, VectorAssembler
    from gateway.anomaly.config import AnomalyConfig, ForestSettings, TagGroup, load_config
    from gateway.anomaly.detector import Detector
    from gateway.anomaly.model import GroupModel, StepResult
    from gateway.anomaly.persist import ModelCorrupt, ModelFileError, ModelVersionError

# Resolved on first use (PEP 562): importing gateway.anomaly.config, as every component's configuration does, must
# not load numpy and the forest libraries into a collector or the publisher.
_HOME = {
    "Shingler": "assembler", "Vector": "assembler", "VectorAssembler": "assembler",
    "AnomalyConfig": "config", "ForestSettings": "config", "TagGroup": "config", "load_config": "config",
    "Detector": "detector", "GroupModel": "model", "StepResult": "model",
    "ModelCorrupt": "persist", "ModelFileError": "persist", "ModelVersionError": "persist",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'gateway.anomaly' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gateway.anomaly.{home}"), name)


__all__ = [
    "AnomalyConfig",
    "Detector",
    "ForestSettings",
    "GroupModel",
    "ModelCorrupt",
    "ModelFileError",
    "ModelVersionError",
    "Shingler",
    "StepResult",
    "TagGroup",
    "Vector",
    "VectorAssembler",
    "load_config",
]
