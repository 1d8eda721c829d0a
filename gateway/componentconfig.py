"""The configuration model of every component: one place, used by the components, recipes, docs and gatewayctl."""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, cast, get_args

from pydantic import Field, create_model, field_validator

from gateway import components
from gateway.anomaly.config import AnomalyDetectorConfig
from gateway.componentbase import CollectorBase, ComponentBase, unique_names
from gateway.destinations.base import DestinationConfigBase
from gateway.destinations.file import FileConfig
from gateway.destinations.iotcore import IotCoreConfig
from gateway.destinations.kinesis import KinesisConfig
from gateway.destinations.mqtt import MqttConfig
from gateway.destinations.sitewise import SiteWiseConfig
from gateway.errors import ConfigError
from gateway.sources.modbus_config import ModbusConnection
from gateway.sources.opcda_config import OpcDaConnection
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import StreamSpec

# Every component's model is reached from here (gateway/components.py names them by "gateway.componentconfig:<name>"),
# the detector's included, although it lives in its own package beside the library it configures.
__all__ = ["DESTINATION_CONFIGS", "AnomalyDetectorConfig", "DestinationConfig", "ModbusCollectorConfig",
           "OpcDaCollectorConfig", "OpcUaCollectorConfig", "PublisherConfig", "default_configuration",
           "publisher_config_with", "unique_names"]

class OpcUaCollectorConfig(CollectorBase, ComponentBase):
    """factoryedge.OpcUaCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.OpcUaCollector").stream),
        description="Stream the values are written to.",
    )
    connections: list[OpcUaConnection] = Field(default_factory=list, description="OPC UA servers to read.")


#: The destination registry: one line per destination type, its config model (which builds and diagnoses it:
#: gateway/plugin.py). ``type`` in a configuration picks the member.
DestinationConfig = Annotated[
    FileConfig
    | MqttConfig
    | IotCoreConfig
    | SiteWiseConfig
    | KinesisConfig,
    Field(discriminator="type"),
]
#: The members of :data:`DestinationConfig`, for what goes over every destination type (tests, docs).
DESTINATION_CONFIGS: tuple[type[DestinationConfigBase], ...] = get_args(get_args(DestinationConfig)[0])


def _default_destinations() -> list[DestinationConfig]:
    return [FileConfig(name="local-file")]


class ModbusCollectorConfig(CollectorBase, ComponentBase):
    """factoryedge.ModbusCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.ModbusCollector").stream),
        description="Stream the values are written to.",
    )
    connections: list[ModbusConnection] = Field(default_factory=list, description="Modbus TCP servers to read.")


class OpcDaCollectorConfig(CollectorBase, ComponentBase):
    """factoryedge.OpcDaCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.OpcDaCollector").stream),
        description="Stream the values are written to.",
    )
    connections: list[OpcDaConnection] = Field(
        default_factory=list, description="OPC DA servers to read, each through its OpenOPC gateway service."
    )


class PublisherConfig(ComponentBase):
    """factoryedge.Publisher."""

    destinations: list[DestinationConfig] = Field(
        default_factory=lambda: _default_destinations(),
        description="Where records go; each has its own position in every stream it reads.",
    )
    dead_letter_stream: str = Field(
        default="factoryedge-deadletter", description="Stream for records a destination refused for good."
    )
    metrics_stream: str = Field(
        default=components.component("factoryedge.Publisher").stream,
        description="Stream the publisher writes its own counters to, as records.",
    )
    metrics_interval_s: float = Field(default=60.0, gt=0, description="How often counters are published as records.")

    @field_validator("destinations")
    @classmethod
    def _unique(cls, destinations: list[DestinationConfig]) -> list[DestinationConfig]:
        return unique_names(destinations, "destination")


def publisher_config_with(*extra: type[DestinationConfigBase]) -> type[PublisherConfig]:
    """A :class:`PublisherConfig` whose ``destinations`` also take the config models ``extra``.

    For a destination kept outside the product, such as the walk-through example in tests/destinations/: it is
    validated, discriminated by ``type``, built and diagnosed exactly as the members of :data:`DestinationConfig`.
    A destination that ships is one line in :data:`DestinationConfig` instead.
    """
    members: Any = Union[(*DESTINATION_CONFIGS, *extra)]  # built at run time: a union over a tuple of models
    field = PublisherConfig.model_fields["destinations"]
    model = create_model(
        "PublisherConfig", __base__=PublisherConfig,
        destinations=(list[Annotated[members, Field(discriminator="type")]],
                      Field(default_factory=_default_destinations, description=field.description)),
    )
    return cast(type[PublisherConfig], model)


def default_configuration(component: str) -> dict[str, Any]:
    """The model's defaults in the JSON shape of a deployment: the recipe's ``DefaultConfiguration``.

    ``tools/gg_build.py`` merges this into every recipe, so the models stay the single source of defaults.
    ``accessControl`` is never part of it: IPC permissions stay in the recipe templates. Null defaults are left
    out: a missing key validates to the same None, and the recipe carries no nulls for the nucleus to interpret.

    Raises:
        KeyError: ``component`` has no configuration model (gateway/components.py names none, or no such component).
    """
    try:
        model = components.config_model(component)
    except ConfigError as exc:
        raise KeyError(str(exc)) from None
    data: dict[str, Any] = json.loads(model().model_dump_json(exclude_none=True))
    if data.get("connections") == []:  # an explicit empty list is refused; left out, the collector deploys idle
        del data["connections"]
    return data
