"""Publish every built component to AWS IoT Greengrass: what ``gdk component publish`` does, for all six.

GDK publishes only the one component of gdk-config.json (the bundle), so this script does it for every recipe in
``greengrass-build/recipes``: it uploads each artifact to ``s3://<bucket>/<Name>/<version>/<file>``, rewrites the
recipe's ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>`` URIs to those objects, and calls
``greengrassv2.create_component_version`` with the recipe, dependencies first (the bundle last). A version that
already exists is left alone and reported (Greengrass versions are immutable: bump the version to publish again).

The bucket, as GDK names it, is ``<publish.bucket>-<region>-<account id>`` from gdk-config.json (created when
missing), or exactly ``--bucket``. Credentials and region come from the usual AWS chain (profile, environment).

Usage::

    python3 tools/gg_build.py && python3 tools/gg_publish.py [--region eu-west-1] [--bucket NAME] [--dry-run]

Exit status 0 when every component is published (or already was), 1 when one failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
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


def _bucket(session: Any, args: argparse.Namespace, project: Path, client: ClientFactory) -> str:
    if args.bucket:
        return str(args.bucket)
    config = json.loads((project / "gdk-config.json").read_text())
    ((_name, settings),) = config["component"].items()
    prefix = (settings.get("publish") or {}).get("bucket")
    if not prefix or prefix.startswith("REPLACE-"):
        raise SystemExit("gg_publish: no bucket: set component.*.publish.bucket in gdk-config.json, or pass --bucket")
    account = client(session, "sts", args.endpoint_url).get_caller_identity()["Account"]
    return f"{prefix}-{session.region_name}-{account}"


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


def publish(args: argparse.Namespace, client: ClientFactory = _client) -> list[dict[str, str]]:
    """Upload and create every component version; one result row per component.

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
    bucket = _bucket(session, args, project, client)
    s3 = client(session, "s3", args.endpoint_url)
    gg = client(session, "greengrassv2", args.endpoint_url)
    rows: list[dict[str, str]] = []
    if not args.dry_run:
        _ensure_bucket(s3, bucket, session.region_name)
    for comp in components:
        recipe = rewrite(comp.recipe, bucket)
        row = {"component": comp.name, "version": comp.version, "bucket": bucket}
        if args.dry_run:
            rows.append({**row, "status": "dry-run", "recipe": json.dumps(recipe)})
            continue
        try:
            for artifact in comp.artifacts:
                s3.upload_file(str(artifact), bucket, f"{comp.name}/{comp.version}/{artifact.name}")
            created = gg.create_component_version(inlineRecipe=json.dumps(recipe).encode())
            rows.append({**row, "status": "created", "arn": created["arn"]})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConflictException":
                rows.append({**row, "status": "exists", "detail": "this version is already published: bump the "
                             "version in pyproject.toml and gdk-config.json to publish changes"})
            else:
                rows.append({**row, "status": "failed", "detail": str(exc)})
        except (BotoCoreError, OSError) as exc:
            rows.append({**row, "status": "failed", "detail": str(exc)})
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
    args = parser.parse_args(argv)
    rows = publish(args, client)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            detail = row.get("arn") or row.get("detail") or ""
            print(f"{row['component']:30} {row['version']:10} {row['status']:8} {detail}")
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
