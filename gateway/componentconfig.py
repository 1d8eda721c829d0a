"""The configuration model of every component: one place, used by the components, recipes, docs and gatewayctl."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.destinations.file import FileDestination
from gateway.destinations.iotcore import IotCoreDestination
from gateway.destinations.kinesis import KinesisDestination
from gateway.destinations.mqtt import MqttDestination
from gateway.destinations.sitewise import SiteWiseDestination
from gateway.sources.modbus import ModbusConnection
from gateway.sources.opcua import OpcUaConnection
from gateway.streams import StoreConfig, StreamSpec


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: StoreConfig = Field(default_factory=StoreConfig, description="Where streams and reader positions live.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    status_interval_s: float = Field(default=2.0, gt=0, description="How often counters are written for gatewayctl.")


class OpcUaCollectorConfig(_Component):
    """factoryedge.OpcUaCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name="factoryedge-opcua"), description="Stream the values are written to."
    )
    connections: list[OpcUaConnection] = Field(default_factory=list, description="OPC UA servers to read.")


Destination = Annotated[
    FileDestination | MqttDestination | IotCoreDestination | SiteWiseDestination | KinesisDestination,
    Field(discriminator="type"),
]


def _default_destinations() -> list[Destination]:
    return [FileDestination(name="local-file")]


class ModbusCollectorConfig(_Component):
    """factoryedge.ModbusCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name="factoryedge-modbus"), description="Stream the values are written to."
    )
    connections: list[ModbusConnection] = Field(default_factory=list, description="Modbus TCP servers to read.")


class PublisherConfig(_Component):
    """factoryedge.Publisher."""

    destinations: list[Destination] = Field(
        default_factory=lambda: _default_destinations(),
        description="Where records go; each has its own position in every stream it reads.",
    )
    dead_letter_stream: str = Field(
        default="factoryedge-deadletter", description="Stream for records a destination refused for good."
    )
    metrics_stream: str = Field(
        default="factoryedge-metrics", description="Stream the publisher writes its own counters to, as records."
    )
    metrics_interval_s: float = Field(default=60.0, gt=0, description="How often counters are published as records.")


COMPONENTS: dict[str, type[BaseModel]] = {
    "factoryedge.OpcUaCollector": OpcUaCollectorConfig,
    "factoryedge.ModbusCollector": ModbusCollectorConfig,
    "factoryedge.Publisher": PublisherConfig,
}


def default_configuration(component: str) -> dict[str, Any]:
    """The model's defaults in the JSON shape of a deployment: the recipe's ``DefaultConfiguration``.

    ``tools/gg_build.py`` merges this into every recipe, so the models stay the single source of defaults.
    ``accessControl`` is never part of it: IPC permissions stay in the recipe templates. Null defaults are left
    out: a missing key validates to the same None, and the recipe carries no nulls for the nucleus to interpret.

    Raises:
        KeyError: ``component`` has no configuration model in :data:`COMPONENTS`.
    """
    model = COMPONENTS.get(component)
    if model is None:
        raise KeyError(f"{component}: no configuration model in gateway.componentconfig.COMPONENTS; add it there")
    data: dict[str, Any] = json.loads(model().model_dump_json(exclude_none=True))
    return data
