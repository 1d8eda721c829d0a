"""Greengrass packaging: runs the build exactly as GDK does (tests/support/gdk_build.py), in a copy of the project, and
checks its output: recipes, zips, default configuration, access control, publishing. install.sh:
test_packaging_install.py. The components checked are the table's (gateway/components.py).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.components import COMMON, component, of_kind
from tests.support.gdk_build import (
    BUILT,
    BUNDLE,
    COLLECTORS,
    ENTRY_DIRS,
    ROOT,
    VERSION,
    gdk_build,
    make_project,
    members,
    recipe_of,
    zip_of,
)

# isort: split
import gg_artifact  # tools/ is on sys.path through tests.support.gdk_build
import gg_lock
import gg_recipe

(CLI,) = (spec.name for spec in of_kind("cli"))  # installs gatewayctl; no entry point (ENTRY_DIRS have one)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("project"))
    result = gdk_build(project)
    assert result.returncode == 0, result.stderr
    return project / "greengrass-build"


def test_build_writes_one_recipe_per_component_and_the_bundle(built: Path) -> None:
    written = sorted(p.name for p in (built / "recipes").iterdir())
    # recipe.yaml: the bundle's again, where `gdk component publish` reads it (tests/test_build_fresh.py)
    assert written == sorted([*(f"{n}-{VERSION}.yaml" for n in [*BUILT, BUNDLE]), "recipe.yaml"])
    for name in [*BUILT, BUNDLE]:
        recipe = recipe_of(built, name)
        assert recipe["ComponentName"] == name
        assert recipe["ComponentVersion"] == VERSION
        assert recipe["ComponentPublisher"] == "factoryedge"
    for name in BUILT:
        assert zip_of(built, name).is_file()


@pytest.mark.parametrize("name", [*BUILT, BUNDLE])
def test_produced_recipe_passes_our_validation(built: Path, name: str) -> None:
    path = built / "recipes" / f"{name}-{VERSION}.yaml"
    text = path.read_text()
    archives = {zip_of(built, name).name: members(built, name)} if name in BUILT else {}
    assert gg_recipe.validate(yaml.safe_load(text), text, VERSION, archives) == []
    assert len(text.encode()) <= gg_recipe.MAX_RECIPE_BYTES
    assert not gg_recipe.PLACEHOLDER.search(text)


@pytest.mark.parametrize("name", ENTRY_DIRS)
def test_lifecycle_runs_only_what_the_zip_holds(built: Path, name: str) -> None:
    recipe, files = recipe_of(built, name), members(built, name)
    architectures = [m["Platform"]["architecture"] for m in recipe["Manifests"]]
    assert architectures == ["amd64", "aarch64"]
    for manifest in recipe["Manifests"]:
        (artifact,) = manifest["Artifacts"]
        assert artifact == {"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{name}.zip", "Unarchive": "ZIP"}
        lifecycle = manifest["Lifecycle"]
        assert lifecycle["Install"]["Timeout"] >= 600
        assert f"{{artifacts:decompressedPath}}/{name}/install.sh" in lifecycle["Install"]["Script"]
        assert lifecycle["Startup"]["Setenv"]["PYTHONPATH"] == f"{{artifacts:decompressedPath}}/{name}"
        module = re.search(r"-m (\S+)", lifecycle["Startup"]["Script"])
        assert module is not None
        assert module.group(1) == f"components.{ENTRY_DIRS[name]}.main"
        assert lifecycle["Startup"]["Script"].startswith('exec "{work:path}/venv/bin/python"')
    assert {"install.sh", "requirements.txt", "requirements-bootstrap.txt", "components/__init__.py",
            "gateway/__init__.py"} <= files
    assert f"components/{ENTRY_DIRS[name]}/main.py" in files


@pytest.mark.parametrize("name", ENTRY_DIRS)
def test_zip_holds_only_what_the_component_needs(built: Path, name: str) -> None:
    files = members(built, name)
    tops = {f.split("/")[0] for f in files}
    assert tops == {"gateway", "components", "install.sh", "requirements.txt", "requirements-bootstrap.txt"}
    assert {f.split("/")[1] for f in files if f.startswith("components/") and f.count("/") > 1} == {ENTRY_DIRS[name]}
    forbidden = re.compile(r"(^|/)(simulator|tests|tep_studio|tep-studio|__pycache__)(/|$)|\.pyc$|^gateway/(dev|cli)/")
    assert [f for f in files if forbidden.search(f)] == []


def test_requirements_follow_the_one_table_and_the_pyproject_pins(built: Path) -> None:
    pins = gg_artifact.project_pins((ROOT / "pyproject.toml").read_text())

    def reqs(name: str) -> set[str]:
        """The top-level distributions of the zip's lock (the indirect ones are test_lock.py's)."""
        with zipfile.ZipFile(zip_of(built, name)) as archive:
            text = archive.read("requirements.txt").decode()
            assert archive.read("requirements-bootstrap.txt") == (ROOT / "locks" / "bootstrap.txt").read_bytes()
        assert text == (ROOT / "locks" / f"{name}.txt").read_text()  # the committed lock, hashes and all
        locked = {e.key: f"{e.name}=={e.version}" for e in gg_lock.parse(text)}
        top = {key for key, pin in locked.items() if key in pins}
        assert all(locked[key] in [p.split(" ;")[0] for p in pins[key]] for key in top), locked
        return top

    # Each collector ships its own protocol libraries and no other's (the config models import none of them).
    own = {name: {gg_artifact.normalize(d) for d in component(name).requires if d not in COMMON}
           for name in COLLECTORS}
    assert own["factoryedge.OpcDaCollector"] == {"openopc-python3x", "pyro4"}
    heavy = {"paho-mqtt", "numpy", "krcf", "rrcf", "boto3"}.union(*own.values())
    for name, libs in own.items():
        assert libs and libs <= reqs(name)
        assert reqs(name) & heavy == libs, name
    assert reqs("factoryedge.AnomalyDetector") & heavy == {"krcf", "rrcf", "numpy"}
    assert reqs("factoryedge.Publisher") & heavy == {"paho-mqtt", "boto3"}
    assert {"krcf", "rrcf", "numpy"} <= reqs("factoryedge.AnomalyDetector")
    assert {"paho-mqtt", "boto3", "awsiotsdk", "stream-manager"} <= reqs("factoryedge.Publisher")
    # gatewayctl: the probes doctor runs as root; never Pyro4 (a client that can be made to unpickle), no numpy
    assert reqs(CLI) & heavy == {"asyncua", "pymodbus", "paho-mqtt"}
    assert {"awsiotsdk", "stream-manager"} <= reqs(CLI)


def test_cli_zip_ships_gatewayctl_and_no_entry_point(built: Path) -> None:
    files = members(built, CLI)
    assert {f.split("/")[0] for f in files} == {"gateway", "install.sh", "requirements.txt",
                                                "requirements-bootstrap.txt"}
    assert {"gateway/cli/main.py", "gateway/cli/core.py", "gateway/cli/doctor.py"} <= files
    assert [f for f in files if re.search(r"^devkit/|(^|/)(simulator|tests|__pycache__)(/|$)|\.pyc$", f)] == []


def test_cli_installs_a_root_owned_command_and_runs_nothing(built: Path) -> None:
    recipe = recipe_of(built, CLI)
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert defaults == {"installDir": "/usr/local/lib/factoryedge-gatewayctl",
                        "commandPath": "/usr/local/bin/gatewayctl"}
    assert "accessControl" not in defaults  # it borrows nothing from IPC by itself: sudo gatewayctl does, as root
    assert [m["Platform"]["architecture"] for m in recipe["Manifests"]] == ["amd64", "aarch64"]
    for manifest in recipe["Manifests"]:
        install = manifest["Lifecycle"]["Install"]
        assert install["RequiresPrivilege"] is True and install["Timeout"] >= 600
        script = install["Script"]
        # sudo runs it: code and venv in root's installDir (never the work folder, which ggc_user owns), python -I
        assert "{work:path}" not in script
        assert 'sh "$dir/app/install.sh" "$dir/venv"' in script and "umask 022" in script
        assert '-I -c "import sys' in script and 'mv "$cmd.new" "$cmd"' in script
        assert manifest["Lifecycle"]["Run"]["Script"].startswith('"{configuration:/commandPath}" --help')
        assert "Startup" not in manifest["Lifecycle"]


@pytest.mark.parametrize("name", ENTRY_DIRS)
def test_install_step_installs_only_hashed_locked_files(built: Path, name: str) -> None:
    with zipfile.ZipFile(zip_of(built, name)) as archive:
        script = archive.read("install.sh").decode()
    assert script == (ROOT / "tools" / "gg_install.sh").read_text()
    pip_installs = [line for line in script.splitlines() if "-m pip install" in line]
    assert pip_installs and all("--require-hashes --no-deps" in line for line in pip_installs)
    assert re.findall(r"^pip_install .*-r \"\$(\w+)\"$", script, re.M) == ["boot", "req"]


def test_bundle_depends_on_every_component_at_the_built_version(built: Path) -> None:
    bundle = recipe_of(built, BUNDLE)
    assert bundle["ComponentDependencies"] == {
        name: {"VersionRequirement": f"={VERSION}", "DependencyType": "HARD"} for name in BUILT
    }
    assert all("Artifacts" not in m for m in bundle["Manifests"])
    assert not (built / "artifacts" / BUNDLE).exists() or not any((built / "artifacts" / BUNDLE).rglob("*.zip"))


def test_access_control_is_least_privilege_with_unique_policy_ids(built: Path) -> None:
    def acl(name: str) -> dict[str, Any]:
        value = recipe_of(built, name)["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
        assert isinstance(value, dict)
        return value

    def operations(name: str) -> dict[str, set[str]]:
        return {
            service: {op for policy in policies.values() for op in policy["operations"]}
            for service, policies in acl(name).items()
        }

    for name in COLLECTORS:
        assert acl(name) == {}
    assert operations("factoryedge.Publisher") == {"aws.greengrass.ipc.mqttproxy": {"aws.greengrass#PublishToIoTCore"}}
    assert operations("factoryedge.AnomalyDetector") == {
        "aws.greengrass.ipc.mqttproxy": {"aws.greengrass#PublishToIoTCore"},
        "aws.greengrass.ipc.pubsub": {"aws.greengrass#PublishToTopic"},
    }
    ids = [policy for name in ENTRY_DIRS for policy in gg_recipe.policy_ids(recipe_of(built, name))]
    assert ids and len(ids) == len(set(ids))
    deps = recipe_of(built, "factoryedge.Publisher")["ComponentDependencies"]
    assert {"aws.greengrass.StreamManager", "aws.greengrass.TokenExchangeService"} <= set(deps)


def test_access_control_allows_exactly_what_the_default_topics_need(built: Path) -> None:
    """The topics the models publish to by default fall under the recipe's policies, as the nucleus matches them."""
    from devkit.ipc_server import MQTT_PROXY, PUBSUB, _allowed
    from gateway.anomaly.config import AlarmEvents
    from gateway.destinations.iotcore import IotCoreConfig

    def allowed(name: str, service: str, operation: str, template: str | None) -> bool:
        assert template is not None
        topic = re.sub(r"\{[a-z_]+\}", "x", template)  # {thing}, {group}, {source}, ... filled in
        acl = recipe_of(built, name)["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
        return _allowed(acl, service, f"aws.greengrass#{operation}", topic, "x")  # x: the thing name too

    publisher, anomaly = "factoryedge.Publisher", "factoryedge.AnomalyDetector"
    assert allowed(publisher, MQTT_PROXY, "PublishToIoTCore", IotCoreConfig(name="cloud").topic)
    assert not allowed(publisher, MQTT_PROXY, "PublishToIoTCore", "factoryedge/x/alarms/x")
    assert not allowed(publisher, PUBSUB, "PublishToTopic", "factoryedge/alarms/x")
    assert allowed(anomaly, MQTT_PROXY, "PublishToIoTCore", AlarmEvents().iot_core_topic)
    assert allowed(anomaly, PUBSUB, "PublishToTopic", AlarmEvents().local_topic)
    assert not allowed(anomaly, MQTT_PROXY, "PublishToIoTCore", IotCoreConfig(name="cloud").topic)


def test_same_sources_give_the_same_zip_bytes(built: Path, tmp_path: Path) -> None:
    project = built.parent
    result = gdk_build(project, "--output-dir", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    for name in ENTRY_DIRS:
        again = tmp_path / "again" / "artifacts" / name / VERSION / f"{name}.zip"
        assert again.read_bytes() == zip_of(built, name).read_bytes(), name


def test_unfilled_placeholder_fails_naming_recipe_and_key(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    template = project / "recipes" / "factoryedge.ModbusCollector.yaml"
    template.write_text(template.read_text().replace('ComponentDescription: "', 'ComponentDescription: "{SITE_NAME} '))
    result = gdk_build(project)
    assert result.returncode == 1
    assert "recipes/factoryedge.ModbusCollector.yaml: ComponentDescription: placeholder {SITE_NAME}" in result.stderr
    assert not (project / "greengrass-build" / "recipes").exists()


def test_an_import_the_component_does_not_ship_fails_the_build(tmp_path: Path) -> None:
    """A module-level import of a library outside the component's requirements would crash-loop on the device."""
    project = make_project(tmp_path)
    main = project / "components" / "opcua_collector" / "main.py"
    main.write_text(main.read_text() + "\nimport krcf  # only the anomaly detector ships it\n")
    result = gdk_build(project, "--component", "factoryedge.OpcUaCollector")
    assert result.returncode == 1
    assert "recipes/factoryedge.OpcUaCollector.yaml: components.opcua_collector.main: imports krcf" in result.stderr


def test_lifecycle_path_missing_from_zip_fails_the_build(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    template = project / "recipes" / "factoryedge.Publisher.yaml"
    template.write_text(template.read_text().replace("components.publisher.main", "components.publisher.nope"))
    result = gdk_build(project)
    assert result.returncode == 1
    assert "recipes/factoryedge.Publisher.yaml: Manifests[0].Lifecycle.Startup.Script: module" in result.stderr


def test_generated_default_configuration_is_merged(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    config = project / "gateway" / "componentconfig.py"  # the last definition wins; the models stay importable
    config.write_text(
        config.read_text() + "\n\ndef default_configuration(component_name):\n"
        "    return {'component': component_name, 'streams': {'maxSizeBytes': 1024}}\n"
    )
    result = gdk_build(project, "--component", "factoryedge.Publisher", "--component", "factoryedge.OpcUaCollector")
    assert result.returncode == 0, result.stderr
    for name in ("factoryedge.Publisher", "factoryedge.OpcUaCollector"):
        config = recipe_of(project / "greengrass-build", name)["ComponentConfiguration"]["DefaultConfiguration"]
        assert config["component"] == name
        assert config["streams"] == {"maxSizeBytes": 1024}
        assert "accessControl" in config


@pytest.mark.parametrize("name", ENTRY_DIRS)
def test_default_configuration_is_exactly_the_models_defaults(built: Path, name: str) -> None:
    """Drift guard: every default the model has is in the built recipe, and nothing else is (accessControl aside)."""
    from gateway.componentconfig import default_configuration
    from gateway.components import config_model

    config = dict(recipe_of(built, name)["ComponentConfiguration"]["DefaultConfiguration"])
    config.pop("accessControl")
    assert config == default_configuration(name)
    assert config_model(name).model_validate(config) == config_model(name)()


def test_a_default_written_by_hand_in_a_template_fails_the_build(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    template = project / "recipes" / "factoryedge.OpcUaCollector.yaml"
    text = template.read_text().replace("  DefaultConfiguration:\n", "  DefaultConfiguration:\n    pollRate: 5\n", 1)
    template.write_text(text)
    result = gdk_build(project)
    assert result.returncode == 1
    assert "recipes/factoryedge.OpcUaCollector.yaml: ComponentConfiguration.DefaultConfiguration.pollRate" in (
        result.stderr
    )


def test_generated_configuration_may_not_grant_ipc_permissions(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "gateway" / "componentconfig.py").write_text(
        "def default_configuration(component_name):\n    return {'accessControl': {}}\n"
    )
    result = gdk_build(project)
    assert result.returncode == 1
    assert "returned accessControl" in result.stderr


def test_gdk_config_names_one_component_with_an_array_build_command() -> None:
    config = json.loads((ROOT / "gdk-config.json").read_text())
    assert list(config["component"]) == [BUNDLE]
    settings = config["component"][BUNDLE]
    assert settings["version"] == VERSION
    assert settings["build"]["build_system"] == "custom"
    command = settings["build"]["custom_build_command"]
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    assert (ROOT / command[-1]).is_file()
    assert {"bucket", "region"} <= set(settings["publish"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", config["gdk_version"])


def test_publish_uploads_every_artifact_and_creates_every_version(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tools/gg_publish.py: S3 on moto; greengrassv2 through botocore's Stubber (moto 5.2.5 has only Greengrass v1),
    which still checks every request against the service's API model."""
    import gg_publish
    from botocore.stub import Stubber
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    recipes: list[dict[str, Any]] = []
    stubs: list[Stubber] = []

    def client(session: Any, service: str, endpoint_url: str | None) -> Any:
        made = session.client(service, endpoint_url=endpoint_url)
        if service != "greengrassv2":
            return made
        made.meta.events.register("provide-client-params.greengrassv2.CreateComponentVersion",
                                  lambda params, **_: recipes.append(json.loads(params["inlineRecipe"])))
        stub = Stubber(made)
        for name in [*BUILT, BUNDLE]:
            arn = f"arn:aws:greengrass:eu-west-1:123456789012:components:{name}:versions:{VERSION}"
            deployable = {"arn": arn, "componentName": name, "componentVersion": VERSION,
                          "status": {"componentState": "DEPLOYABLE", "message": "ok", "errors": {}}}
            if len(stubs) == 0:  # looked up, created, checked (more cases: tests/test_publish.py)
                stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
                stub.add_response("create_component_version", {"arn": arn, "componentName": name,
                                                               "componentVersion": VERSION, "creationTimestamp": 0,
                                                               "status": {"componentState": "REQUESTED"}})
            # the check after creating; on the second run, the lookup that finds every version published already
            stub.add_response("describe_component", deployable)
        stub.activate()
        stubs.append(stub)
        return made

    args = ["--project-dir", str(built.parent), "--region", "eu-west-1", "--bucket", "feg-artifacts", "--json",
            "--poll-s", "0"]
    with mock_aws():
        assert gg_publish.main(args, client) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["component"] for r in rows][-1] == BUNDLE  # dependencies first
        assert {r["component"]: r["status"] for r in rows} == {n: "created" for n in [*BUILT, BUNDLE]}
        s3 = boto3_client("s3")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="feg-artifacts")["Contents"]}
        assert keys == {f"{n}/{VERSION}/{n}.zip" for n in BUILT}
        for recipe in recipes:
            name = recipe["ComponentName"]
            uris = [a["URI"] for m in recipe["Manifests"] for a in m.get("Artifacts", [])]
            assert uris == [f"s3://feg-artifacts/{name}/{VERSION}/{name}.zip"] * len(uris)
            assert bool(uris) == (name != BUNDLE)
            assert recipe.get("ComponentConfiguration") == recipe_of(built, name).get("ComponentConfiguration")
        assert gg_publish.main(args, client) == 0  # a published version is left alone, and said so
        assert {r["status"] for r in json.loads(capsys.readouterr().out)} == {"exists"}
    for stub in stubs:
        stub.assert_no_pending_responses()


def boto3_client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name="eu-west-1")


def test_publish_without_a_bucket_says_how_to_name_one(built: Path) -> None:
    import gg_publish

    with pytest.raises(SystemExit, match=re.escape("publish.bucket in gdk-config.json, or pass --bucket")):
        gg_publish.main(["--project-dir", str(built.parent), "--region", "eu-west-1", "--dry-run"])


def test_deployment_examples_validate_against_the_models(built: Path) -> None:
    """docs/examples: every configuration merged onto the built defaults is valid; the bundle and the services the
    product relies on (stream manager with client authentication, nucleus) are deployed; versions are the build's."""
    from devkit.devrun_recipe import configuration_update
    from gateway.components import config_model
    from gateway.config import validate

    fleet = json.loads((ROOT / "docs" / "examples" / "fleet-deployment.json").read_text())
    local = json.loads((ROOT / "docs" / "examples" / "local-config.json").read_text())
    components = fleet["components"]
    assert components[BUNDLE]["componentVersion"] == VERSION
    stream_manager = json.loads(components["aws.greengrass.StreamManager"]["configurationUpdate"]["merge"])
    assert stream_manager["STREAM_MANAGER_AUTHENTICATE_CLIENT"] == "true"
    assert stream_manager["STREAM_MANAGER_SERVER_PORT"] == "8088"  # the port the components assume
    assert "aws.greengrass.Nucleus" in components
    # the recipes scope IoT Core topics with {iot:thingName}: the nucleus resolves it only with this (default false)
    nucleus = json.loads(components["aws.greengrass.Nucleus"]["configurationUpdate"]["merge"])
    assert nucleus["interpolateComponentConfiguration"] is True
    assert local.pop("aws.greengrass.Nucleus")["MERGE"]["interpolateComponentConfiguration"] is True
    assert fleet["deploymentPolicies"]["configurationValidationPolicy"]["timeoutInSeconds"] >= 20
    updates = [(n, c) for n, c in components.items() if n in ENTRY_DIRS and "configurationUpdate" in c]
    updates += list(local.items())
    assert updates
    for name, update in updates:
        assert name in ENTRY_DIRS
        defaults = recipe_of(built, name)["ComponentConfiguration"]["DefaultConfiguration"]
        validate(config_model(name), configuration_update(defaults, defaults, update), origin=f"example {name}")
        if "componentVersion" in update:
            assert update["componentVersion"] == VERSION
