"""The one place that maps a destination config to its implementation (a discriminated union is the registry)."""

from __future__ import annotations

from gateway.destinations.base import Destination, DestinationConfigBase
from gateway.destinations.file import FileConfig, FileDestination
from gateway.destinations.iotcore import IotCoreConfig, IotCoreDestination
from gateway.destinations.kinesis import KinesisConfig, KinesisDestination
from gateway.destinations.mqtt import MqttConfig, MqttDestination
from gateway.destinations.sitewise import SiteWiseConfig, SiteWiseDestination


def make_sink(cfg: DestinationConfigBase) -> Destination:
    if isinstance(cfg, FileConfig):
        return FileDestination(cfg)
    if isinstance(cfg, MqttConfig):
        return MqttDestination(cfg)
    if isinstance(cfg, IotCoreConfig):
        return IotCoreDestination(cfg)
    if isinstance(cfg, SiteWiseConfig):
        return SiteWiseDestination(cfg)
    if isinstance(cfg, KinesisConfig):
        return KinesisDestination(cfg)
    raise TypeError(f"no implementation for destination type {type(cfg).__name__}")
