"""Publish every built component to AWS IoT Greengrass: what ``gdk component publish`` does, for all six.

GDK publishes only the one component of gdk-config.json (the bundle), so this script does it for every recipe in
``greengrass-build/recipes``: it uploads each artifact to ``s3://<bucket>/<Name>/<version>/<file>``, rewrites the
recipe's ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>`` URIs to those objects, and calls
``greengrassv2.create_component_version`` with the recipe, dependencies first (the bundle last), then waits until
Greengrass has checked the version: DEPLOYABLE, or FAILED (reported, exit 1).

Nothing published is ever changed: a core checks each download against the digest recorded when the version was
created, so a replaced zip breaks every later deployment of that version. The version is looked up first (one that
exists is left alone and reported, with whether this build differs from it), and an artifact is put only where no
object is (a conditional put); an object there with other content refuses the component (exit 1).

The bucket, as GDK names it, is ``<publish.bucket>-<region>-<account id>`` from gdk-config.json (created when
missing), or exactly ``--bucket``. Credentials and region come from the usual AWS chain (profile, environment).

Usage::

    python3 tools/gg_build.py && python3 tools/gg_publish.py [--region eu-west-1] [--bucket NAME] [--dry-run]

Exit status 0 when every component is published and DEPLOYABLE (or already was), 1 when one failed or was refused,
2 on bad usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER_URI = re.compile(r"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/([^/]+)")


@dataclass
class Built:
    """One built component: its recipe and the artifact files its recipe names."""

    name: str
    version: str
    recipe: dict[str, Any]
    artifacts: list[Path]


def load_build(build: Path) -> list[Built]:
    """Every built recipe with its artifacts, in publishing order (a component after its dependencies)."""
    found: dict[str, Built] = {}
    for path in sorted((build / "recipes").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        name, version = str(recipe["ComponentName"]), str(recipe["ComponentVersion"])
        if path.name != f"{name}-{version}.yaml":
            continue  # recipe.yaml: the bundle's copy under the name `gdk component publish` reads
        files: set[str] = set()
        for manifest in recipe.get("Manifests") or []:
            for artifact in manifest.get("Artifacts") or []:
                match = PLACEHOLDER_URI.fullmatch(str(artifact.get("URI", "")))
                if match is None:
                    raise SystemExit(f"gg_publish: {path}: artifact URI {artifact.get('URI')!r} is not "
                                     "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>: rebuild it")
                files.add(match.group(1))
        artifacts = [build / "artifacts" / name / version / f for f in sorted(files)]
        missing = [str(a) for a in artifacts if not a.is_file()]
        if missing:
            raise SystemExit(f"gg_publish: {path}: artifacts not built: {', '.join(missing)}; run tools/gg_build.py")
        found[name] = Built(name, version, recipe, artifacts)
    if not found:
        raise SystemExit(f"gg_publish: no recipes in {build / 'recipes'}: run tools/gg_build.py first")
    ordered: list[Built] = []

    def visit(name: str) -> None:
        if name in found and found[name] not in ordered:
            for dep in found[name].recipe.get("ComponentDependencies") or {}:
                visit(dep)
            ordered.append(found[name])

    for name in sorted(found):
        visit(name)
    return ordered


def rewrite(recipe: dict[str, Any], bucket: str) -> dict[str, Any]:
    """The recipe with its artifact URIs pointing at the uploaded objects."""
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    text = json.dumps(recipe)
    text = PLACEHOLDER_URI.sub(lambda m: f"s3://{bucket}/{name}/{version}/{m.group(1)}", text)
    result: dict[str, Any] = json.loads(text)
    return result


def _bucket_prefix(args: argparse.Namespace, project: Path) -> str | None:
    """``publish.bucket`` of gdk-config.json (None with ``--bucket``); refuses the template's placeholder."""
    if args.bucket:
        return None
    config = json.loads((project / "gdk-config.json").read_text())
    ((_name, settings),) = config["component"].items()
    prefix = (settings.get("publish") or {}).get("bucket")
    if not prefix or prefix.startswith("REPLACE-"):
        raise SystemExit("gg_publish: no bucket: set component.*.publish.bucket in gdk-config.json, or pass --bucket")
    return str(prefix)


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, **extra)


ClientFactory = Callable[[Any, str, "str | None"], Any]


def _client(session: Any, service: str, endpoint_url: str | None) -> Any:
    return session.client(service, endpoint_url=endpoint_url)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _published_sha256(s3: Any, bucket: str, key: str) -> str | None:
    """sha256 of the object at ``key``, None when there is none. Ours carry it as metadata; others are read."""
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    recorded = (head.get("Metadata") or {}).get("sha256")
    if recorded:
        return str(recorded)
    digest = hashlib.sha256()
    for block in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(block)
    return digest.hexdigest()


class Refused(Exception):
    """Publishing this component would change what devices already download; the message says what to do."""


def upload_once(s3: Any, bucket: str, key: str, artifact: Path) -> str:
    """Put ``artifact`` at ``key`` unless an object is there; never replace one. Returns "uploaded" or "kept".

    A core checks a downloaded artifact against the digest Greengrass recorded when the version was created, so a
    replaced object makes every later download of that version fail. The put is conditional (``If-None-Match: *``):
    two publishers racing cannot overwrite each other either.
    """
    from botocore.exceptions import ClientError

    local = _sha256(artifact)
    for _attempt in range(2):
        remote = _published_sha256(s3, bucket, key)
        if remote == local:
            return "kept"
        if remote is not None:
            raise Refused(f"s3://{bucket}/{key} already exists with other content (sha256 {remote}, this build "
                          f"{local}); published artifacts are never replaced: bump the version in pyproject.toml "
                          "and gdk-config.json, rebuild and publish that")
        try:
            with artifact.open("rb") as body:
                s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", Metadata={"sha256": local},
                              ChecksumSHA256=base64.b64encode(bytes.fromhex(local)).decode())
            return "uploaded"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            # someone else put it between our look and our put: compare with theirs
    raise Refused(f"s3://{bucket}/{key}: another publisher keeps writing it; publish again when it is done")


def _component_arn(session: Any, account: str, name: str, version: str) -> str:
    partition = session.get_partition_for_region(session.region_name)
    return f"arn:{partition}:greengrass:{session.region_name}:{account}:components:{name}:versions:{version}"


def _describe(gg: Any, arn: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return gg.describe_component(arn=arn)  # type: ignore[no-any-return]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise


def wait_deployable(gg: Any, arn: str, timeout_s: float, interval_s: float) -> dict[str, Any]:
    """Poll the version until Greengrass has DEPLOYABLE or FAILED it (it checks artifacts and recipe after creating)."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = _describe(gg, arn) or {}
        status = described.get("status") or {}
        if status.get("componentState") in ("DEPLOYABLE", "FAILED") or time.monotonic() >= deadline:
            return dict(status)
        time.sleep(interval_s)


def _status_row(row: dict[str, str], status: dict[str, Any], timeout_s: float) -> dict[str, str]:
    state = str(status.get("componentState") or "UNKNOWN")
    if state == "DEPLOYABLE":
        return {**row, "status": row["status"]}
    if state == "FAILED":
        errors = "; ".join(f"{k}: {v}" for k, v in (status.get("errors") or {}).items())
        return {**row, "status": "failed", "detail": f"Greengrass marked the version FAILED: "
                f"{status.get('message') or ''} {errors}".strip()}
    return {**row, "status": "failed", "detail": f"still {state} after {timeout_s:g} s: look at it with "
            f"`aws greengrassv2 describe-component --arn {row['arn']}` (or pass a longer --wait-s)"}


def publish_one(s3: Any, gg: Any, comp: Built, bucket: str, arn: str, args: argparse.Namespace) -> dict[str, str]:
    """Publish one component version: look first, upload only what is missing, create, wait until DEPLOYABLE."""
    row = {"component": comp.name, "version": comp.version, "bucket": bucket, "arn": arn}
    keys = {f"{comp.name}/{comp.version}/{a.name}": a for a in comp.artifacts}
    existing = _describe(gg, arn)
    if existing is not None:
        status = existing.get("status") or {}
        if status.get("componentState") not in ("DEPLOYABLE", "FAILED"):
            status = wait_deployable(gg, arn, args.wait_s, args.poll_s)
        # Greengrass versions are immutable: upload nothing; say whether this build differs from what is out there.
        differs = [k for k, a in keys.items() if _published_sha256(s3, bucket, k) not in (None, _sha256(a))]
        detail = ("this version is already published" + (f"; this build differs from it ({', '.join(differs)}): "
                  "bump the version in pyproject.toml and gdk-config.json to publish changes" if differs else ""))
        return _status_row({**row, "status": "exists", "detail": detail}, status, args.wait_s)
    for key, artifact in keys.items():
        upload_once(s3, bucket, key, artifact)
    recipe = rewrite(comp.recipe, bucket)
    try:
        gg.create_component_version(inlineRecipe=json.dumps(recipe).encode())
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "ConflictException":
            return {**row, "status": "exists", "detail": "created by someone else while this run uploaded"}
        raise
    status = wait_deployable(gg, arn, args.wait_s, args.poll_s)
    return _status_row({**row, "status": "created"}, status, args.wait_s)


def publish(args: argparse.Namespace, client: ClientFactory = _client) -> list[dict[str, str]]:
    """Publish every built component, dependencies first; one result row per component.

    ``client(session, service, endpoint_url)`` makes the AWS clients (tests stub greengrassv2, which moto lacks).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    project = Path(args.project_dir).resolve()
    build = Path(args.build or project / "greengrass-build").resolve()
    components = [c for c in load_build(build) if not args.component or c.name in args.component]
    session = boto3.session.Session(region_name=args.region)
    if session.region_name is None:
        raise SystemExit("gg_publish: no AWS region: pass --region or set AWS_REGION")
    prefix = _bucket_prefix(args, project)
    account = str(client(session, "sts", args.endpoint_url).get_caller_identity()["Account"])
    bucket = str(args.bucket) if prefix is None else f"{prefix}-{session.region_name}-{account}"  # as GDK names it
    s3 = client(session, "s3", args.endpoint_url)
    gg = client(session, "greengrassv2", args.endpoint_url)
    rows: list[dict[str, str]] = []
    if not args.dry_run:
        _ensure_bucket(s3, bucket, session.region_name)
    for comp in components:
        arn = _component_arn(session, account, comp.name, comp.version)
        if args.dry_run:
            rows.append({"component": comp.name, "version": comp.version, "bucket": bucket, "arn": arn,
                         "status": "dry-run", "recipe": json.dumps(rewrite(comp.recipe, bucket))})
            continue
        try:
            rows.append(publish_one(s3, gg, comp, bucket, arn, args))
        except Refused as exc:
            rows.append({"component": comp.name, "version": comp.version, "bucket": bucket, "arn": arn,
                         "status": "refused", "detail": str(exc)})
        except (ClientError, BotoCoreError, OSError) as exc:
            rows.append({"component": comp.name, "version": comp.version, "bucket": bucket, "arn": arn,
                         "status": "failed", "detail": str(exc)})
        if rows[-1]["status"] in ("failed", "refused"):
            # A component that depends on this one would be created against a version that is not deployable.
            dependents = [c.name for c in components if comp.name in (c.recipe.get("ComponentDependencies") or {})]
            if dependents:
                print(f"gg_publish: {comp.name} {rows[-1]['status']}; {', '.join(dependents)} will be published "
                      "anyway but cannot be deployed until it is", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None, client: ClientFactory = _client) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project-dir", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--build", help="build folder (default <project>/greengrass-build)")
    parser.add_argument("--region", help="AWS region (default: the AWS chain's, e.g. AWS_REGION)")
    parser.add_argument("--bucket", help="exact artifact bucket (default <publish.bucket>-<region>-<account>)")
    parser.add_argument("--component", action="append", default=[], help="publish only this one (repeatable)")
    parser.add_argument("--endpoint-url", help="AWS endpoint override (a local moto server in tests)")
    parser.add_argument("--dry-run", action="store_true", help="show the rewritten recipes, upload nothing")
    parser.add_argument("--json", action="store_true", help="one JSON list of results")
    parser.add_argument("--wait-s", type=float, default=600.0,
                        help="how long to wait for each new version to become DEPLOYABLE (default 600)")
    parser.add_argument("--poll-s", type=float, default=5.0, help="seconds between status checks (default 5)")
    args = parser.parse_args(argv)
    rows = publish(args, client)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            detail = row.get("detail") or row.get("arn") or ""
            print(f"{row['component']:30} {row['version']:10} {row['status']:8} {detail}")
    return 1 if any(r["status"] in ("failed", "refused") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
