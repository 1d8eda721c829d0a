"""Write every file that follows from the component table (gateway/components.py), so that none is edited by hand.

- ``recipes/<Name>.yaml``: each component's recipe template (tools/gg_build.py fills and validates it);
- ``recipe.yaml``: the bundle, which depends on every component (GDK requires it at the root);
- ``components/<entry>/main.py``: each entry point, one call of :func:`gateway.entry.entry_point` (a new
  entry folder also gets an empty ``__init__.py``).

Recipes are text with comments, not dumped YAML: the comments say why each setting is what it is, and they belong
next to the setting in the file people read. A recipe differs by the component's kind (dependencies, IPC
permissions, lifecycle); everything else comes from its :class:`~gateway.components.ComponentSpec`.

Usage: ``python3 tools/gg_templates.py`` writes the files; ``--check`` writes nothing and exits 1 naming each file
that differs (tests/test_components.py runs the same check). Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:  # run as a script from tools/: the table is the project's own
    sys.path.insert(0, str(PROJECT))

from gateway.components import COMPONENTS, ComponentSpec, of_kind  # noqa: E402

GENERATED = "# Generated from gateway/components.py by tools/gg_templates.py: change those, not this file.\n"

_HEADER = GENERATED + """\
# Recipe template of {name}. tools/gg_build.py fills the {{COMPONENT_*}} placeholders (name, version
# from pyproject.toml, publisher from gdk-config.json), merges generated default configuration, validates, and
# writes greengrass-build/recipes/{name}-<version>.yaml next to the artifact zip.
"""

_TOP = """\
RecipeFormatVersion: "2020-01-25"
ComponentName: "{{COMPONENT_NAME}}"
ComponentVersion: "{{COMPONENT_VERSION}}"
ComponentDescription: "{description}"
ComponentPublisher: "{{COMPONENT_PUBLISHER}}"
"""

_STREAM_MANAGER = """\
  # SOFT: a stream manager restart must not restart us (the adapter reconnects; streams persist on disk).
  aws.greengrass.StreamManager:
    VersionRequirement: ">=2.1.0 <3.0.0"
    DependencyType: SOFT
"""

_TOKEN_EXCHANGE = """\
  # HARD: credentials come from the TES endpoint given in our environment at start; restart with it.
  aws.greengrass.TokenExchangeService:
    VersionRequirement: ">=2.0.0 <3.0.0"
    DependencyType: HARD
"""

# IPC permissions by kind: least privilege, reviewed here (the generated default configuration never holds any).
_ACCESS_CONTROL = {
    "collector": """\
    # Collectors only read devices and append to streams: no IPC authorization at all.
    accessControl: {{}}
""",
    "detector": """\
    # Alarm events (gateway.anomaly.config.AlarmEvents defaults: factoryedge/{{thing}}/alarms/{{group}} to IoT Core,
    # factoryedge/alarms/{{group}} locally; tests/test_packaging.py checks they stay allowed). Ids are unique per core.
    accessControl:
      aws.greengrass.ipc.mqttproxy:
        "{name}:mqttproxy:1":
          policyDescription: Publish anomaly alarms to AWS IoT Core.
          operations:
            - "aws.greengrass#PublishToIoTCore"
          resources:
            - "factoryedge/{{iot:thingName}}/alarms/#"
      aws.greengrass.ipc.pubsub:
        "{name}:pubsub:1":
          policyDescription: Publish alarm events to local components.
          operations:
            - "aws.greengrass#PublishToTopic"
          resources:
            - "factoryedge/alarms/*"
""",
    "publisher": """\
    # Only the iotcore destination uses IPC: PublishToIoTCore on the topics of its default template
    # (factoryedge/{{thing}}/telemetry/...; tests/test_packaging.py checks they stay allowed). A deployment that changes
    # the template outside factoryedge/{{iot:thingName}}/telemetry/ must change this policy too (a merge of
    # accessControl). {{iot:thingName}} (substituted by the nucleus, 2.6.0 and later): a component may publish under its
    # own core's thing name only, never as another thing.
    accessControl:
      aws.greengrass.ipc.mqttproxy:
        "{name}:mqttproxy:1":
          policyDescription: Publish telemetry records to AWS IoT Core.
          operations:
            - "aws.greengrass#PublishToIoTCore"
          resources:
            - "factoryedge/{{iot:thingName}}/telemetry/#"
""",
}

_MANIFESTS = """\
Manifests:
  - Platform:
      os: linux
      architecture: amd64
    Artifacts: &artifacts
      - URI: "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{name}.zip"
        Unarchive: ZIP
    Lifecycle: &lifecycle
{lifecycle}\
  - Platform:
      os: linux
      architecture: aarch64
    Artifacts: *artifacts
    Lifecycle: *lifecycle
"""

_LIFECYCLE = """\
      # Runs at install and at every nucleus start: install.sh is idempotent (venv kept, pip only when the pinned
      # requirements changed). 900 s: a first install downloads every pinned wheel over a plant uplink.
      Install:
        Timeout: 900
        Script: sh "{{artifacts:decompressedPath}}/{name}/install.sh" "{{work:path}}/venv"
      # Startup, not Run: the component is STARTING until it reports RUNNING over IPC, once its configuration
      # applied (GenericExternalService.startup); under Run the nucleus sets RUNNING itself and ignores ours
      # (Lifecycle.reportState). ERRORED, reported or a non-zero exit, makes the nucleus restart the process, and
      # the third within an hour makes it BROKEN: the component reports it only when a restart is the fix.
      # It must report RUNNING within the Startup timeout (120 s by default); it does not wait for stream manager
      # or peers for that. The process runs on after this step: the nucleus stops it at shutdown.
      Startup:
        Setenv:
          PYTHONPATH: "{{artifacts:decompressedPath}}/{name}"
          PYTHONUNBUFFERED: "1"
        Script: exec "{{work:path}}/venv/bin/python" -m {module}
"""

_CLI_HEADER = GENERATED + """\
# Recipe template of {name}: installs the `gatewayctl` command on the core, for technicians (sudo gatewayctl
# doctor | status | tail | buffer; docs/gatewayctl.md, "On a Greengrass core"). tools/gg_build.py fills the
# {{COMPONENT_*}} placeholders and writes greengrass-build/recipes/{name}-<version>.yaml.
#
# Everything sudo runs must be writable by root only: the work folder belongs to the component's user (ggc_user),
# so the code and its venv are copied to installDir (root's, 0755) and the wrapper runs python -I (no PYTHONPATH,
# no current directory on sys.path) from there.
"""

_CLI_CONFIGURATION = """\
ComponentConfiguration:
  DefaultConfiguration:
    # Where the code and its venv go (created by root, 0755) and where the command is written (0755).
    installDir: /usr/local/lib/factoryedge-gatewayctl
    commandPath: /usr/local/bin/gatewayctl
"""

_CLI_LIFECYCLE = """\
      # As root (RequiresPrivilege), at install and at every nucleus start: idempotent (install.sh keeps the venv
      # while the locks are unchanged; the code copy and the wrapper are replaced atomically).
      Install:
        RequiresPrivilege: true
        Timeout: 900
        Script: |
          set -eu
          umask 022
          dir="{{configuration:/installDir}}"
          mkdir -p "$dir"
          owner=$(stat -c %u "$dir")
          if [ "$owner" != "$(id -u)" ] || [ -n "$(find "$dir" -maxdepth 0 -perm /022)" ]; then
            echo "{name}: $dir must belong to $(id -un) and not be group/other-writable (sudo runs it)" >&2
            exit 1
          fi
          rm -rf "$dir/app.new"
          cp -R "{{artifacts:decompressedPath}}/{name}" "$dir/app.new"
          # readable by every technician, writable by root only (the unpacked artifacts may be private)
          chmod -R u=rwX,go=rX "$dir/app.new"
          rm -rf "$dir/app.old"
          if [ -d "$dir/app" ]; then mv "$dir/app" "$dir/app.old"; fi
          mv "$dir/app.new" "$dir/app"
          rm -rf "$dir/app.old"
          sh "$dir/app/install.sh" "$dir/venv"
          cmd="{{configuration:/commandPath}}"
          mkdir -p "$(dirname "$cmd")"
          {wrapper} \\
            "$dir/venv/bin/python" "'$dir/app'" > "$cmd.new"
          chmod 755 "$cmd.new"
          mv "$cmd.new" "$cmd"
          echo "{name}: installed $cmd"
      # Nothing to run: proves the command starts (every command module imports) and ends FINISHED.
      Run:
        Script: '"{{configuration:/commandPath}}" --help > /dev/null'
"""

# The wrapper gatewayctl: python -I from root's copy (one line of the script, longer than this file's lines).
_CLI_WRAPPER = (
    "printf '#!/bin/sh\\n# {name}: gatewayctl (docs/gatewayctl.md). Written at install; do not edit.\\n"
    'exec "%s" -I -c "import sys; sys.path.insert(0, %s); from gateway.cli.main import entry; sys.exit(entry())" '
    "\"$@\"\\n'"
)

_BUNDLE = GENERATED + """\
# Bundle recipe of factoryedge.Gateway: no artifacts, only dependencies, so deploying this one component deploys
# the whole gateway. GDK requires this file at the root; tools/gg_build.py fills the {{COMPONENT_*}} placeholders
# and writes greengrass-build/recipes/factoryedge.Gateway-<version>.yaml.
RecipeFormatVersion: "2020-01-25"
ComponentName: "{{COMPONENT_NAME}}"
ComponentVersion: "{{COMPONENT_VERSION}}"
ComponentDescription: "{description}"
ComponentPublisher: "{{COMPONENT_PUBLISHER}}"
# Every part is pinned to the bundle's own version: the parts are built and tested together.
ComponentDependencies:
{dependencies}\
Manifests:
  - Platform:
      os: linux
    Lifecycle: {{}}
"""

_BUNDLE_DEPENDENCY = """\
  {name}:
    VersionRequirement: "={{COMPONENT_VERSION}}"
    DependencyType: HARD
"""

_CLI_DEPENDENCY_WHY = """\
  # gatewayctl for technicians on the core (sudo gatewayctl doctor): installs the command, runs nothing.
"""

_MAIN = '''\
"""Entry point of {name}.

{description}
Generated from gateway/components.py by tools/gg_templates.py: change those, not this file.
"""

import sys

from gateway.entry import entry_point

main = entry_point("{name}")  # imports what it runs: the build checks that from the zip

if __name__ == "__main__":
    sys.exit(main())
'''


def recipe(spec: ComponentSpec) -> str:
    """The recipe template of one component."""
    if spec.kind == "cli":
        lifecycle = _CLI_LIFECYCLE.format(name=spec.name, wrapper=_CLI_WRAPPER.format(name=spec.name))
        return (_CLI_HEADER.format(name=spec.name) + _TOP.format(description=spec.description) + _CLI_CONFIGURATION
                + _MANIFESTS.format(name=spec.name, lifecycle=lifecycle))
    dependencies = _STREAM_MANAGER + (_TOKEN_EXCHANGE if spec.kind == "publisher" else "")
    lifecycle = _LIFECYCLE.format(name=spec.name, module=spec.entry_module)
    return (_HEADER.format(name=spec.name) + _TOP.format(description=spec.description)
            + "ComponentDependencies:\n" + dependencies
            + "ComponentConfiguration:\n  DefaultConfiguration:\n" + _ACCESS_CONTROL[spec.kind].format(name=spec.name)
            + _MANIFESTS.format(name=spec.name, lifecycle=lifecycle))


def bundle() -> str:
    """The bundle recipe: every component, pinned to the bundle's version."""
    protocols = [spec.protocol for spec in of_kind("collector")]
    collectors = f"{', '.join(protocols[:-1])} and {protocols[-1]}" if len(protocols) > 1 else protocols[0]
    description = f"Factory edge gateway: {collectors} collectors, anomaly scoring and publishing."
    dependencies = "".join((_CLI_DEPENDENCY_WHY if spec.kind == "cli" else "")
                           + _BUNDLE_DEPENDENCY.format(name=spec.name) for spec in COMPONENTS)
    return _BUNDLE.format(description=description, dependencies=dependencies)


def entry_point(spec: ComponentSpec) -> str:
    """``components/<entry>/main.py`` of one component."""
    return _MAIN.format(name=spec.name, description=spec.description)


def generate() -> dict[str, str]:
    """``{path relative to the project: content}`` of every generated file."""
    files = {f"recipes/{spec.name}.yaml": recipe(spec) for spec in COMPONENTS}
    files["recipe.yaml"] = bundle()
    for spec in COMPONENTS:
        if spec.entry:
            files[f"components/{spec.entry}/main.py"] = entry_point(spec)
    return files


def stale(project: Path = PROJECT) -> list[str]:
    """The generated files that are missing or differ in ``project``, and recipe templates no component has."""
    problems = []
    for path, text in generate().items():
        target = project / path
        if not target.is_file():
            problems.append(f"{path}: missing")
        elif target.read_text() != text:
            problems.append(f"{path}: differs from what gateway/components.py generates")
    wanted = {f"{spec.name}.yaml" for spec in COMPONENTS}
    problems.extend(f"recipes/{p.name}: no component of that name in gateway/components.py"
                    for p in sorted((project / "recipes").glob("*.yaml")) if p.name not in wanted)
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` only compare) the generated files; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file differs")
    args = parser.parse_args(argv)
    problems = stale()
    if args.check:
        for problem in problems:
            print(f"gg_templates: {problem}; run python3 tools/gg_templates.py", file=sys.stderr)
        return 1 if problems else 0
    for path, text in generate().items():
        target = PROJECT / path
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"gg_templates: wrote {path}")
            if path.endswith("/main.py") and not (target.parent / "__init__.py").exists():
                (target.parent / "__init__.py").write_text("")  # a regular package, like its siblings
    for problem in problems:
        if "no component of that name" in problem:
            print(f"gg_templates: {problem}: remove it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
