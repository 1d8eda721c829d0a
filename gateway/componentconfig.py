"""The configuration model of every component: one place, used by the components, recipes, docs and gatewayctl."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from gateway import components
from gateway.anomaly.config import AlarmEvents, AnomalyConfig, TagGroup
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
from gateway.streams import StoreConfig, StreamSpec


def unique_names(items: list[Any], what: str) -> list[Any]:
    """``items`` if no two share a name; each name keys positions, status and restarts, so a repeat would silently
    drop one of them."""
    seen: set[str] = set()
    repeated = [i.name for i in items if i.name in seen or seen.add(i.name)]  # type: ignore[func-returns-value]
    if repeated:
        raise ValueError(f"{what} names {sorted(set(repeated))} are used more than once: give every {what} its own "
                         "name")
    return items


class _Collector(BaseModel):
    """What every collector configuration has: its connection list, checked, and its counters as records."""

    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the connections' counters (read, written, dropped, gaps) are "
        "written to the stream as METRIC records, for the fleet to see in the cloud; also at stop."
    )

    @field_validator("connections", check_fields=False)
    @classmethod
    def _unique(cls, connections: list[Any]) -> list[Any]:
        # runs only on a list that was given (pydantic does not validate the default): left out, the collector
        # deploys idle, as a bare deployment of the bundle does; written empty, it is a mistake
        if not connections:
            raise ValueError("an empty list: list the servers to read (see docs/examples), or leave connections out "
                             "to deploy the component idle")
        return unique_names(connections, "connection")


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: StoreConfig = Field(default_factory=StoreConfig, description="Where streams and reader positions live.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    status_interval_s: float = Field(default=2.0, gt=0, description="How often counters are written for gatewayctl.")

    @model_validator(mode="after")
    def _streams_that_cannot_jam(self) -> _Component:
        # Stream manager frees a full RejectNewData stream only by time to live (reading deletes nothing): without
        # one it refuses data for good. With store kind auto the same check runs when the stream is created.
        if self.store.kind != "stream_manager":
            return self
        for name in type(self).model_fields:
            spec = getattr(self, name)
            if isinstance(spec, StreamSpec) and spec.strategy_on_full == "RejectNewData" and spec.ttl_s is None:
                raise ValueError(f"{name}: RejectNewData without ttl_s on stream manager refuses data for good once "
                                 f"the stream is full (reading frees nothing there): set {name}.ttl_s, or use "
                                 "strategy_on_full: OverwriteOldestData")
        return self


class OpcUaCollectorConfig(_Collector, _Component):
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


class ModbusCollectorConfig(_Collector, _Component):
    """factoryedge.ModbusCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.ModbusCollector").stream),
        description="Stream the values are written to.",
    )
    connections: list[ModbusConnection] = Field(default_factory=list, description="Modbus TCP servers to read.")


class OpcDaCollectorConfig(_Collector, _Component):
    """factoryedge.OpcDaCollector."""

    stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.OpcDaCollector").stream),
        description="Stream the values are written to.",
    )
    connections: list[OpcDaConnection] = Field(
        default_factory=list, description="OPC DA servers to read, each through its OpenOPC gateway service."
    )


class PublisherConfig(_Component):
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


class AnomalyDetectorConfig(_Component):
    """factoryedge.AnomalyDetector (tag groups: :class:`gateway.anomaly.config.TagGroup`, docs/anomaly.md)."""

    input_streams: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_ ,.\-]{1,255}$")]] = Field(
        default_factory=components.collector_streams,
        description="Collector streams to read, each from this component's own durable position; a stream that "
        "does not exist yet is waited for.",
    )
    output_stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.AnomalyDetector").stream),
        description="Stream the score, alarm, attribution and state records are written to.",
    )
    start_from: Literal["latest", "oldest"] = Field(
        default="latest",
        description="Where a stream this component never read is started: latest (learn from the live data after "
        "deployment) or oldest (also learn from what the stream retains).",
    )
    model_dir: str = Field(
        default="anomaly-model",
        description="Folder of the saved model (model.zip), relative to the working directory (the component's "
        "work path under Greengrass); `gatewayctl anomaly fit --model` writes one to start already scoring.",
    )
    groups: list[TagGroup] = Field(default_factory=list, description="Tag groups, each scored by its own forest.")
    save_interval_s: float = Field(default=300.0, gt=0, description="Seconds between periodic model saves.")
    output_prefix: str = Field(
        default="anomaly", description="Prefix of output tags: <prefix>/<group>/score, /alarm, /attribution, /state."
    )
    late_s: float = Field(
        default=2.0,
        ge=0,
        description="When no new records arrive, the detector's clock keeps moving this many seconds behind the "
        "wall clock, so that members that stopped are reported stale.",
    )
    alarms: AlarmEvents = Field(default_factory=AlarmEvents, description="Alarm events over Greengrass IPC.")
    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the detector's counters (read, written, dropped, lost) are "
        "written to the output stream as METRIC records."
    )

    def detector_config(self) -> AnomalyConfig | None:
        """The library configuration of the groups, or None when no group is configured."""
        if not self.groups:
            return None
        return AnomalyConfig(
            groups=self.groups, save_interval_s=self.save_interval_s, output_prefix=self.output_prefix
        )

    @model_validator(mode="after")
    def _valid_groups(self) -> AnomalyDetectorConfig:
        self.detector_config()  # group names used twice fail here, as in a groups file
        return self


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
