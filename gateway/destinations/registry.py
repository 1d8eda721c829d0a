"""The one place that maps a destination config to its implementation (a discriminated union is the registry)."""

from __future__ import annotations

from gateway.destinations.base import Destination, DestinationBase
from gateway.destinations.file import FileDestination, FileSink
from gateway.destinations.mqtt import MqttDestination, MqttSink


def make_sink(cfg: DestinationBase) -> Destination:
    if isinstance(cfg, FileDestination):
        return FileSink(cfg)
    if isinstance(cfg, MqttDestination):
        return MqttSink(cfg)
    raise TypeError(f"no implementation for destination type {type(cfg).__name__}")
