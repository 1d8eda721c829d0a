"""The configuration examples in docs/examples/*.yaml stay valid against the component models.

Each file names its component in a first-line comment (``# component: factoryedge.X``), or by its file name
(``publisher.yaml``). The JSON deployment documents beside them are checked by tests/test_packaging.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cli.configs import recognise
from gateway.componentconfig import COMPONENTS
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
        assert component in COMPONENTS, f"{path.name}: unknown component {component!r}"
        seen.add(component)
        try:
            validate(COMPONENTS[component], data, origin=path.name)
        except ConfigError as exc:
            problems += [f"{path.name} ({component}): {p}" for p in exc.problems or [str(exc)]
                         if not _DEVICE_FILE_MISSING.search(p)]
    assert not problems, "\n".join(problems)
    assert {"factoryedge.OpcUaCollector", "factoryedge.ModbusCollector", "factoryedge.OpcDaCollector",
            "factoryedge.Publisher"} <= seen
