"""The one place that maps a destination config to its implementation (a discriminated union is the registry)."""

from __future__ import annotations

from gateway.destinations.base import Destination, DestinationBase
from gateway.destinations.file import FileDestination, FileSink
from gateway.destinations.iotcore import IotCoreDestination, IotCoreSink
from gateway.destinations.kinesis import KinesisDestination, KinesisSink
from gateway.destinations.mqtt import MqttDestination, MqttSink
from gateway.destinations.sitewise import SiteWiseDestination, SiteWiseSink


def make_sink(cfg: DestinationBase) -> Destination:
    if isinstance(cfg, FileDestination):
        return FileSink(cfg)
    if isinstance(cfg, MqttDestination):
        return MqttSink(cfg)
    if isinstance(cfg, IotCoreDestination):
        return IotCoreSink(cfg)
    if isinstance(cfg, SiteWiseDestination):
        return SiteWiseSink(cfg)
    if isinstance(cfg, KinesisDestination):
        return KinesisSink(cfg)
    raise TypeError(f"no implementation for destination type {type(cfg).__name__}")
