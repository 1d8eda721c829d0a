"""Random cut forest anomaly scoring: tag groups -> whitened, shingled vectors -> forest -> scores and alarms.

Public API (what the component and ``gatewayctl`` use):

- :class:`AnomalyConfig`, :class:`TagGroup`, :class:`ForestSettings`, :func:`load_config` (config models)
- :class:`Detector` (records in, score/alarm records out, persistence)
- :class:`VectorAssembler`, :class:`GroupModel`, :class:`StepResult` (building blocks, for tests and tools)
- :mod:`gateway.anomaly.offline` (fit / score / status on CSV history), :func:`register` (the CLI)
"""

from gateway.anomaly.assembler import Shingler, Vector, VectorAssembler
from gateway.anomaly.config import AnomalyConfig, ForestSettings, TagGroup, load_config
from gateway.anomaly.detector import Detector
from gateway.anomaly.model import GroupModel, StepResult
from gateway.anomaly.persist import ModelCorrupt, ModelFileError, ModelVersionError

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
