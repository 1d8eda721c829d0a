"""Issue 12 item 7: the recipes' IoT Core permissions name the core's own thing, never any thing (``+``).

``factoryedge/+/telemetry/#`` let a component publish as any thing of the account; ``{iot:thingName}`` (which the
nucleus substitutes in accessControl resources) limits it to its own. The dev IPC server substitutes it the same way,
so ``gatewayctl dev run`` refuses a publish to another thing's topic as a device would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.ipc_server import MQTT_PROXY, IpcServer, _allowed, _Fault
from gateway.anomaly.config import AlarmEvents
from gateway.components import COMPONENTS, ComponentSpec
from gateway.destinations.iotcore import IotCoreConfig

ROOT = Path(__file__).resolve().parents[1]
OP = "aws.greengrass#PublishToIoTCore"


def _acl(name: str) -> dict[str, Any]:
    recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    value = recipe["ComponentConfiguration"]["DefaultConfiguration"].get("accessControl", {})
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("spec", COMPONENTS, ids=lambda spec: spec.name)
def test_iot_core_resources_are_scoped_to_the_thing_name(spec: ComponentSpec) -> None:
    name = spec.name
    resources = [r for policy in _acl(name).get(MQTT_PROXY, {}).values() for r in policy["resources"]]
    assert bool(resources) == (spec.kind in ("publisher", "detector"))  # collectors and the Cli publish nothing
    for resource in resources:
        levels = resource.split("/")
        assert levels[1] == "{iot:thingName}", f"{name}: {resource} lets it publish as any thing"
        assert "+" not in levels and "*" not in resource


@pytest.mark.parametrize(("name", "template"), [
    ("factoryedge.Publisher", IotCoreConfig(name="cloud").topic),
    ("factoryedge.AnomalyDetector", AlarmEvents().iot_core_topic)])
def test_own_thing_allowed_another_thing_refused(name: str, template: str | None) -> None:
    assert template is not None and "{thing}" in template
    acl = _acl(name)

    def topic(thing: str) -> str:
        return template.replace("{thing}", thing).replace("{", "").replace("}", "")

    assert _allowed(acl, MQTT_PROXY, OP, topic("line1-gateway"), "line1-gateway")
    assert not _allowed(acl, MQTT_PROXY, OP, topic("line2-gateway"), "line1-gateway")
    assert not _allowed(acl, MQTT_PROXY, OP, topic("line1-gateway"), None)  # no thing name: nothing matches


def test_dev_ipc_server_refuses_another_things_topic(tmp_path: Path) -> None:
    server = IpcServer(tmp_path / "s", {}, access_control={"factoryedge.Publisher": _acl("factoryedge.Publisher")},
                       thing_name="line1-gateway", interpolate_component_configuration=True)
    server._authorize("factoryedge.Publisher", "PublishToIoTCore",
                      {"topicName": "factoryedge/line1-gateway/telemetry/plc/value"})
    with pytest.raises(_Fault, match="not authorized"):
        server._authorize("factoryedge.Publisher", "PublishToIoTCore",
                          {"topicName": "factoryedge/line2-gateway/telemetry/plc/value"})


def test_without_interpolation_the_core_grants_nothing_for_the_thing_scoped_topics(tmp_path: Path) -> None:
    """As a real core with interpolateComponentConfiguration left at its default (false): the recipe's
    {iot:thingName} stays literal, so the publisher's own topic is refused (docs/deploying.md says to turn it on)."""
    server = IpcServer(tmp_path / "s", {}, access_control={"factoryedge.Publisher": _acl("factoryedge.Publisher")},
                       thing_name="line1-gateway")
    with pytest.raises(_Fault):
        server._authorize("factoryedge.Publisher", "PublishToIoTCore",
                          {"topicName": "factoryedge/line1-gateway/telemetry/plc/value"})
