"""tools/gg_publish.py against S3 on moto and greengrassv2 through botocore's Stubber (moto 5.2.5 has only Greengrass
v1; the Stubber still checks every request against the service's API model).

A published artifact is never changed (a core checks each download against the digest recorded at creation), the
version is looked up before anything is uploaded, and a new version is waited for until DEPLOYABLE or FAILED.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import gg_publish  # noqa: E402

REGION, ACCOUNT, BUCKET, VERSION = "eu-west-1", "123456789012", "feg-artifacts", "1.2.3"
COMPONENT, BUNDLE = "factoryedge.Thing", "factoryedge.Bundle"
KEY = f"{COMPONENT}/{VERSION}/{COMPONENT}.zip"
URI = f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{COMPONENT}.zip"


def arn(name: str) -> str:
    # moto's STS answers with its fixed test account
    return f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{name}:versions:{VERSION}"


def make_build(folder: Path, content: bytes = b"zip v1") -> Path:
    """A build folder as tools/gg_build.py writes it: one component with a zip and a bundle depending on it."""
    build = folder / "greengrass-build"
    (build / "recipes").mkdir(parents=True, exist_ok=True)
    zip_path = build / "artifacts" / COMPONENT / VERSION / f"{COMPONENT}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    zip_path.write_bytes(content)
    thing = {"RecipeFormatVersion": "2020-01-25", "ComponentName": COMPONENT, "ComponentVersion": VERSION,
             "Manifests": [{"Platform": {"os": "linux"}, "Artifacts": [{"URI": URI, "Unarchive": "ZIP"}]}]}
    bundle = {"RecipeFormatVersion": "2020-01-25", "ComponentName": BUNDLE, "ComponentVersion": VERSION,
              "ComponentDependencies": {COMPONENT: {"VersionRequirement": f"={VERSION}"}},
              "Manifests": [{"Platform": {"os": "linux"}}]}
    (build / "recipes" / f"{COMPONENT}-{VERSION}.yaml").write_text(yaml.safe_dump(thing))
    (build / "recipes" / f"{BUNDLE}-{VERSION}.yaml").write_text(yaml.safe_dump(bundle))
    (build / "recipes" / "recipe.yaml").write_text(yaml.safe_dump(bundle))  # GDK's copy: not a second bundle
    return build


def status(state: str, message: str = "", errors: dict[str, str] | None = None) -> dict[str, Any]:
    return {"componentState": state, "message": message or state.lower(), "errors": errors or {}}


def described(name: str, state: str, **kwargs: Any) -> dict[str, Any]:
    return {"arn": arn(name), "componentName": name, "componentVersion": VERSION, "status": status(state, **kwargs)}


Script = Callable[[Any], None]  # adds the greengrassv2 responses one run expects to a Stubber


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def run(build: Path, script: Script, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[Any]]:
    """One gg_publish run with greengrassv2 answering as ``script`` says; every scripted answer must be used."""
    from botocore.stub import Stubber

    stubs: list[Stubber] = []

    def client(session: Any, service: str, endpoint_url: str | None) -> Any:
        made = session.client(service, endpoint_url=endpoint_url)
        if service == "greengrassv2":
            stub = Stubber(made)
            script(stub)
            stub.activate()
            stubs.append(stub)
        return made

    args = ["--project-dir", str(build.parent), "--build", str(build), "--region", REGION, "--bucket", BUCKET,
            "--json", "--poll-s", "0", "--wait-s", "30", *extra]
    code = gg_publish.main(args, client)
    for stub in stubs:
        stub.assert_no_pending_responses()
    return code, json.loads(capsys.readouterr().out)


def new_version(stub: Any, name: str, *states: str) -> None:
    """Greengrass has no such version; it is created and then described as ``states`` one after the other."""
    stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404,
                          expected_params={"arn": arn(name)})
    stub.add_response("create_component_version", {"arn": arn(name), "componentName": name,
                                                   "componentVersion": VERSION, "creationTimestamp": 0,
                                                   "status": status("REQUESTED")})
    for state in states:
        stub.add_response("describe_component", described(name, state), expected_params={"arn": arn(name)})


def both_new(stub: Any) -> None:
    new_version(stub, COMPONENT, "DEPLOYABLE")
    new_version(stub, BUNDLE, "DEPLOYABLE")


def s3_object() -> bytes:
    import boto3

    body: bytes = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
    return body


def test_new_versions_are_uploaded_created_and_waited_for_until_deployable(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    build = make_build(tmp_path)

    def script(stub: Any) -> None:
        new_version(stub, COMPONENT, "REQUESTED", "INITIATED", "DEPLOYABLE")
        new_version(stub, BUNDLE, "DEPLOYABLE")

    code, rows = run(build, script, capsys)
    assert code == 0
    assert [(r["component"], r["status"]) for r in rows] == [(COMPONENT, "created"), (BUNDLE, "created")]
    assert s3_object() == b"zip v1"


def test_publishing_again_never_changes_a_published_zip(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second run finds the versions published: it uploads nothing, even from a build whose zip differs."""
    build = make_build(tmp_path)
    code, _ = run(build, both_new,
                  capsys)
    assert code == 0
    make_build(tmp_path, b"zip v2, rebuilt without a version bump")

    def again(stub: Any) -> None:
        for name in (COMPONENT, BUNDLE):
            stub.add_response("describe_component", described(name, "DEPLOYABLE"), expected_params={"arn": arn(name)})

    code, rows = run(build, again, capsys)
    assert code == 0
    assert {r["status"] for r in rows} == {"exists"}
    assert s3_object() == b"zip v1"
    assert f"this build differs from it ({KEY})" in rows[0]["detail"]
    assert "bump the version" in rows[0]["detail"]


def test_an_object_already_there_with_other_content_is_refused_not_replaced(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that uploaded and then failed before creating the version left a zip: a different one must not replace
    it (a version created later by someone else may point at it)."""
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"someone else's zip")
    build = make_build(tmp_path)

    def script(stub: Any) -> None:
        stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
        new_version(stub, BUNDLE, "DEPLOYABLE")

    code, rows = run(build, script, capsys)
    assert code == 1
    row = rows[0]
    assert row["status"] == "refused"
    digest = hashlib.sha256(b"someone else's zip").hexdigest()
    assert f"s3://{BUCKET}/{KEY} already exists with other content (sha256 {digest}" in row["detail"]
    assert "never replaced: bump the version" in row["detail"]
    assert s3_object() == b"someone else's zip"


def test_the_same_zip_left_by_an_interrupted_run_is_kept_and_the_version_created(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"zip v1")
    build = make_build(tmp_path)
    code, rows = run(build, both_new,
                     capsys)
    assert code == 0
    assert [r["status"] for r in rows] == ["created", "created"]


def test_a_version_greengrass_marks_failed_is_reported(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    build = make_build(tmp_path)

    def script(stub: Any) -> None:
        new_version(stub, COMPONENT, "REQUESTED")
        stub.add_response("describe_component", {
            **described(COMPONENT, "FAILED", message="artifact check failed",
                        errors={"s3://feg-artifacts/x.zip": "ACCESS_DENIED"})})
        new_version(stub, BUNDLE, "DEPLOYABLE")

    code, rows = run(build, script, capsys)
    assert code == 1
    assert rows[0]["status"] == "failed"
    assert "FAILED: artifact check failed" in rows[0]["detail"] and "ACCESS_DENIED" in rows[0]["detail"]
    assert rows[1]["status"] == "created"


def test_an_existing_failed_version_is_reported_failed(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    build = make_build(tmp_path)

    def script(stub: Any) -> None:
        stub.add_response("describe_component", described(COMPONENT, "FAILED", message="bad recipe"))
        stub.add_response("describe_component", described(BUNDLE, "DEPLOYABLE"))

    code, rows = run(build, script, capsys)
    assert code == 1
    assert [r["status"] for r in rows] == ["failed", "exists"]


def test_a_version_never_checked_in_time_is_a_failure_naming_the_arn(
    tmp_path: Path, aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    build = make_build(tmp_path)

    def script(stub: Any) -> None:
        new_version(stub, COMPONENT, "REQUESTED")
        new_version(stub, BUNDLE, "DEPLOYABLE")

    code, rows = run(build, script, capsys, "--wait-s", "0", "--component", COMPONENT, "--component", BUNDLE)
    assert code == 1
    assert "still REQUESTED after 0 s" in rows[0]["detail"] and arn(COMPONENT) in rows[0]["detail"]


def test_publish_without_a_bucket_says_how_to_name_one(tmp_path: Path) -> None:
    build = make_build(tmp_path)
    (tmp_path / "gdk-config.json").write_text(json.dumps({"component": {BUNDLE: {"publish": {
        "bucket": "REPLACE-WITH-ARTIFACT-BUCKET-PREFIX", "region": REGION}}}}))
    with pytest.raises(SystemExit, match=r"publish\.bucket in gdk-config\.json, or pass --bucket"):
        gg_publish.main(["--project-dir", str(tmp_path), "--build", str(build), "--region", REGION, "--dry-run"])
