"""The one place that maps a destination config to its implementation (a discriminated union is the registry)."""

from __future__ import annotations

from gateway.destinations.base import Destination, DestinationConfigBase
from gateway.destinations.file import FileConfig, FileSink
from gateway.destinations.iotcore import IotCoreConfig, IotCoreSink
from gateway.destinations.kinesis import KinesisConfig, KinesisSink
from gateway.destinations.mqtt import MqttConfig, MqttSink
from gateway.destinations.sitewise import SiteWiseConfig, SiteWiseSink


def make_sink(cfg: DestinationConfigBase) -> Destination:
    if isinstance(cfg, FileConfig):
        return FileSink(cfg)
    if isinstance(cfg, MqttConfig):
        return MqttSink(cfg)
    if isinstance(cfg, IotCoreConfig):
        return IotCoreSink(cfg)
    if isinstance(cfg, SiteWiseConfig):
        return SiteWiseSink(cfg)
    if isinstance(cfg, KinesisConfig):
        return KinesisSink(cfg)
    raise TypeError(f"no implementation for destination type {type(cfg).__name__}")
