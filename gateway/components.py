"""Every Greengrass component of the gateway, declared once: :data:`COMPONENTS`.

Everything else about a component is derived from its :class:`ComponentSpec`: the recipe templates and the bundle's
dependencies (``tools/gg_templates.py`` writes ``recipes/*.yaml`` and ``recipe.yaml``), what its artifact zip ships
(``tools/gg_artifact.py``), its lock (``tools/lock.py``), its entry point (``components/<entry>/main.py`` calls
:func:`entry_point`), the streams the detector and the publisher's routes read by default, the demo, ``dev run`` and
the packaging tests. A new component is one :class:`ComponentSpec` here besides its own modules (the checklist
for a protocol: docs/DEVELOPING.md).

Standard library only at import: ``tools/gg_bootstrap.py`` reads the table before anything is installed, and the
configuration models (``gateway.componentconfig``, ``gateway.destinations.base``) read their default stream names
from it. So the configuration model, a collector's source and a component's runner are named by import path here
and loaded on first use (:func:`config_model`, :func:`entry_point`); ``tests/test_components.py`` loads every one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

Kind = Literal["collector", "detector", "publisher", "cli"]

# Every component imports the gateway package, whose core needs these (config models, codec, streams, IPC). The
# config models import no protocol library (gateway/sources/*_config.py; paho, boto3 and numpy are loaded on first
# use), so each component ships only its own; the build fails when a component lacks a library its entry point
# imports (tools/gg_artifact.py import_problems).
COMMON = ("pydantic", "PyYAML", "cbor2", "stream-manager", "awsiotsdk", "awscrt")

# gatewayctl's commands that work on a core (doctor, status, streams/tail/buffer, replay, config, opcua, modbus):
# the build imports each from the Cli's zip with only the Cli's libraries.
CLI_MODULES = ("gateway.cli.main", "gateway.cli.core", "gateway.cli.doctor", "gateway.cli.status",
               "gateway.cli.streamscmd", "gateway.cli.replay", "gateway.cli.configcmd", "gateway.cli.opcua",
               "gateway.cli.modbus")


@dataclass(frozen=True)
class ComponentSpec:
    """One Greengrass component.

    Attributes:
        name: Greengrass component name, also the name of its recipe, zip, lock and status file.
        kind: what it is; decides its runner, recipe shape (dependencies, IPC permissions) and default streams.
        description: the recipe's ComponentDescription.
        requires: pinned third-party distributions its zip installs (names only: versions come from pyproject.toml).
        entry: folder of its entry point ``components/<entry>/main.py``; empty for a component that runs no entry
            point of its own (factoryedge.Cli installs gatewayctl).
        config: its configuration model, a class of :mod:`gateway.componentconfig`; empty when it has none.
        stream: the stream it writes by default (collectors: values; detector: scores and alarms; publisher: its
            counters); every one is in a destination's default route.
        protocol: a collector's protocol as people say it (the bundle's description).
        source: a collector's source class, ``module:Class`` (run by :func:`gateway.collector.collector_runner`).
        run: the runner of any other component with an entry point, ``module:function`` taking the runtime context.
        noisy_loggers: loggers of its libraries that are silenced (CRITICAL only; why: above :data:`COMPONENTS`).
        gateway_parts: optional subpackages of ``gateway`` its zip ships (``cli``: development tools otherwise).
        check_modules: modules the build imports from its zip with only ``requires`` installed (default: the entry
            point, which loads everything the component runs).
    """

    name: str
    kind: Kind
    description: str
    requires: tuple[str, ...]
    entry: str = ""
    config: str = ""
    stream: str = ""
    protocol: str = ""
    source: str = ""
    run: str = ""
    noisy_loggers: tuple[str, ...] = ()
    gateway_parts: tuple[str, ...] = ()
    check_modules: tuple[str, ...] = ()

    @property
    def entry_module(self) -> str:
        """The module the recipe runs (``python -m``), empty without an entry point."""
        return f"components.{self.entry}.main" if self.entry else ""


# noisy_loggers: a protocol library logs on its own what the source already reports (asyncua: a full traceback at
# ERROR on every network cut), while the source's reconnect loop reports each state change once.
COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec(
        "factoryedge.OpcUaCollector", "collector", "OPC UA collector: reads OPC UA nodes into a local stream.",
        (*COMMON, "asyncua"), entry="opcua_collector", config="OpcUaCollectorConfig", stream="factoryedge-opcua",
        protocol="OPC UA", source="gateway.sources.opcua:OpcUaSource", noisy_loggers=("asyncua",),
    ),
    ComponentSpec(
        "factoryedge.ModbusCollector", "collector", "Modbus TCP collector: polls registers into a local stream.",
        (*COMMON, "pymodbus"), entry="modbus_collector", config="ModbusCollectorConfig", stream="factoryedge-modbus",
        protocol="Modbus TCP", source="gateway.sources.modbus:ModbusSource",
        noisy_loggers=("pymodbus",),
    ),
    ComponentSpec(
        "factoryedge.OpcDaCollector", "collector",
        "OPC DA collector (through the OpenOPC gateway service): reads tags into a local stream.",
        (*COMMON, "OpenOPC-Python3x", "Pyro4"), entry="opcda_collector", config="OpcDaCollectorConfig",
        stream="factoryedge-opcda", protocol="OPC DA", source="gateway.sources.opcda:OpcDaSource",
        noisy_loggers=("Pyro4",),
    ),
    ComponentSpec(
        "factoryedge.AnomalyDetector", "detector",
        "Anomaly detector: random cut forest scoring of collected streams, raises alarms.",
        (*COMMON, "numpy", "krcf", "rrcf"), entry="anomaly_detector", config="AnomalyDetectorConfig",
        stream="factoryedge-anomaly", run="gateway.anomaly.component:run",
    ),
    ComponentSpec(
        "factoryedge.Publisher", "publisher",
        "Publisher: forwards streams to AWS IoT Core, Kinesis, SiteWise and MQTT brokers.",
        (*COMMON, "paho-mqtt", "boto3"), entry="publisher", config="PublisherConfig", stream="factoryedge-metrics",
        run="gateway.publisher_component:run",
    ),
    # gatewayctl on the device: doctor's probes for OPC UA, Modbus and MQTT peers (the rest fall back to a TCP check);
    # no OpenOPC/Pyro4 (a client that can be made to unpickle, NOTES 13: not under sudo) and no numpy/boto3.
    ComponentSpec(
        "factoryedge.Cli", "cli",
        "gatewayctl, the gateway's troubleshooting CLI, installed as a command for technicians (sudo).",
        (*COMMON, "asyncua", "pymodbus", "paho-mqtt"), gateway_parts=("cli",), check_modules=CLI_MODULES,
    ),
)

_BY_NAME = {spec.name: spec for spec in COMPONENTS}


def names() -> list[str]:
    """Every component name, in table order."""
    return list(_BY_NAME)


def component(name: str) -> ComponentSpec:
    """The spec of component ``name``.

    Raises:
        ConfigError: no component of that name; the message lists the known ones.
    """
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ConfigError(f"unknown component {name!r}",
                          fix=f"use one of {', '.join(_BY_NAME)}, or declare it in gateway/components.py")
    return spec


def of_kind(*kinds: Kind) -> list[ComponentSpec]:
    """The components of the given kinds, in table order."""
    return [spec for spec in COMPONENTS if spec.kind in kinds]


def collector_streams() -> list[str]:
    """Every collector's stream: what the detector reads by default."""
    return [spec.stream for spec in of_kind("collector")]


def published_streams() -> list[str]:
    """Every stream a component writes by default (values, scores and alarms, the publisher's counters): what a
    destination's route reads by default, so that a new collector's stream is sent without anyone listing it."""
    return [spec.stream for spec in COMPONENTS if spec.stream]


def load(path: str) -> Any:
    """The object an import path ``module:attribute`` of the table names (imports the module)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def config_model(name: str) -> type[BaseModel]:
    """The configuration model of component ``name`` (imports pydantic and the models on first use).

    Raises:
        ConfigError: unknown component, or one without a configuration (factoryedge.Cli).
    """
    spec = component(name)
    if not spec.config:
        configurable = ", ".join(s.name for s in COMPONENTS if s.config)
        raise ConfigError(f"{name} has no configuration model", fix=f"use one of {configurable}")
    model: type[BaseModel] = load(f"gateway.componentconfig:{spec.config}")
    return model


def config_models() -> dict[str, type[BaseModel]]:
    """``{component name: configuration model}`` of every component that has one, in table order."""
    return {spec.name: config_model(spec.name) for spec in COMPONENTS if spec.config}
