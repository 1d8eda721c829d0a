"""The configuration examples in docs/examples/*.yaml stay valid against the component models.

Each file names its component in a first-line comment (``# component: factoryedge.X``), or by its file name
(``publisher.yaml``). The JSON deployment documents beside them are checked by tests/test_packaging.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cli.configs import recognise
from gateway.components import config_models
from gateway.config import read_file, validate
from gateway.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
_COMPONENT = re.compile(r"^#\s*component:\s*(\S+)")
# The examples name files of the device they are written for (certificates under /etc/factoryedge), which
# validation checks exist: on this machine that is the one problem they may have.
_DEVICE_FILE_MISSING = re.compile(r"file /etc/factoryedge/\S+ does not exist")


def _component(path: Path, data: object) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    named = _COMPONENT.match(first)
    return named.group(1) if named else recognise(path, data)


def test_every_yaml_example_validates_against_its_component_model() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5, f"expected the collector and publisher examples in {EXAMPLES}, found {files}"
    problems: list[str] = []
    seen: set[str] = set()
    for path in files:
        data = read_file(path)
        component = _component(path, data)
        assert component in config_models(), f"{path.name}: unknown component {component!r}"
        seen.add(component)
        try:
            validate(config_models()[component], data, origin=path.name)
        except ConfigError as exc:
            problems += [f"{path.name} ({component}): {p}" for p in exc.problems or [str(exc)]
                         if not _DEVICE_FILE_MISSING.search(p)]
    assert not problems, "\n".join(problems)
    assert {"factoryedge.OpcUaCollector", "factoryedge.ModbusCollector", "factoryedge.OpcDaCollector",
            "factoryedge.Publisher"} <= seen


def _allowed(policy: dict[str, object]) -> set[str]:
    actions: set[str] = set()
    for statement in policy["Statement"]:  # type: ignore[attr-defined]
        found = statement["Action"]
        actions.update([found] if isinstance(found, str) else found)
    return actions


def test_the_token_exchange_policy_allows_every_aws_call_the_destinations_make() -> None:
    """Every boto3 operation in gateway/destinations (by the service model's own names) is in the example IAM
    policy, so a device given that role never meets AccessDenied for a call the code makes."""
    import json

    import botocore.session

    session = botocore.session.get_session()
    calls: set[str] = set()
    for service, prefix in (("kinesis", "kinesis"), ("iotsitewise", "iotsitewise")):
        model = session.get_service_model(service)
        by_method = {re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower(): op for op in model.operation_names}
        source = "\n".join(p.read_text() for p in (EXAMPLES.parent.parent / "gateway" / "destinations").glob("*.py"))
        calls |= {f"{prefix}:{op}" for method, op in by_method.items() if re.search(rf"\.{method}\b", source)}
    assert {"kinesis:PutRecords", "iotsitewise:BatchPutAssetPropertyValue"} <= calls
    policy = json.loads((EXAMPLES / "token-exchange-role-policy.json").read_text())
    assert calls <= _allowed(policy), f"missing from the policy: {sorted(calls - _allowed(policy))}"


def test_the_iot_policy_lets_the_device_publish_exactly_where_its_recipes_allow() -> None:
    import json

    import yaml

    policy = json.loads((EXAMPLES / "iot-policy.json").read_text())
    published = [r for s in policy["Statement"] if "iot:Publish" in s["Action"]
                 for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    for recipe in sorted((EXAMPLES.parent.parent / "recipes").glob("*.yaml")):
        access = yaml.safe_load(recipe.read_text())["ComponentConfiguration"]["DefaultConfiguration"].get(
            "accessControl", {})
        for policy_set in access.get("aws.greengrass.ipc.mqttproxy", {}).values():
            for topic in policy_set["resources"]:
                # the recipe's {iot:thingName} is the policy's ${iot:Connection.Thing.ThingName}; MQTT # is IAM *
                as_iam = topic.replace("{iot:thingName}", "${iot:Connection.Thing.ThingName}").replace("#", "*")
                assert any(r.endswith(f":topic/{as_iam}") for r in published), f"{recipe.name}: {topic}"
