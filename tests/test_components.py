"""The component table (gateway/components.py) is the one declaration of every component: the files generated from
it are committed as generated, every reference it holds loads, and the defaults that name streams follow it."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway import components, entry
from gateway.componentconfig import AnomalyDetectorConfig, PublisherConfig
from gateway.components import COMPONENTS, collector_streams, component, config_model, of_kind, published_streams
from gateway.destinations.base import Route
from gateway.errors import ConfigError
from tests.support.gdk_build import ROOT

# isort: split
import gg_artifact  # tools/ is on sys.path through tests.support.gdk_build
import gg_templates


def test_committed_generated_files_are_what_the_table_generates() -> None:
    assert gg_templates.stale(ROOT) == []


def _copy(tmp_path: Path) -> Path:
    for folder in ("recipes", "components"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "recipe.yaml", tmp_path / "recipe.yaml")
    return tmp_path


def test_a_hand_edited_recipe_or_entry_point_is_reported(tmp_path: Path) -> None:
    project = _copy(tmp_path)
    assert gg_templates.stale(project) == []
    recipe = project / "recipes" / "factoryedge.ModbusCollector.yaml"
    recipe.write_text(recipe.read_text().replace("Timeout: 900", "Timeout: 300"))
    (project / "components" / "publisher" / "main.py").unlink()
    (project / "recipes" / "factoryedge.Old.yaml").write_text("{}\n")
    bundle = project / "recipe.yaml"
    bundle.write_text(bundle.read_text().replace("  factoryedge.Cli:\n", "  factoryedge.Cli2:\n"))
    assert gg_templates.stale(project) == [
        "recipes/factoryedge.ModbusCollector.yaml: differs from what gateway/components.py generates",
        "recipe.yaml: differs from what gateway/components.py generates",
        "components/publisher/main.py: missing",
        "recipes/factoryedge.Old.yaml: no component of that name in gateway/components.py",
    ]


def test_every_component_has_a_unique_name_entry_and_stream() -> None:
    for attribute in ("name", "entry", "stream"):
        values = [getattr(spec, attribute) for spec in COMPONENTS if getattr(spec, attribute)]
        assert len(values) == len(set(values)), attribute
    assert [spec.name for spec in of_kind("cli")] == ["factoryedge.Cli"]


@pytest.mark.parametrize("spec", COMPONENTS, ids=lambda s: s.name)
def test_every_reference_of_the_table_loads(spec: components.ComponentSpec) -> None:
    """Model, source and runner are named by import path: each must load and be what its kind needs."""
    if spec.kind == "cli":
        assert not spec.entry and not spec.config and not spec.stream and spec.check_modules
        with pytest.raises(ConfigError, match=r"factoryedge\.Cli has no configuration model"):
            config_model(spec.name)
        return
    model = config_model(spec.name)
    assert issubclass(model, BaseModel) and model.__name__ == spec.config
    assert (ROOT / "components" / spec.entry / "main.py").is_file()
    if spec.kind == "collector":
        assert spec.protocol and spec.stream
        assert inspect.isclass(components.load(spec.source))
        assert model().stream.name == spec.stream  # type: ignore[attr-defined]
    else:
        assert inspect.iscoroutinefunction(components.load(spec.run))
    shipped = {gg_artifact.normalize(dist) for dist in spec.requires}
    assert {gg_artifact.normalize(logger) for logger in spec.noisy_loggers} <= shipped
    assert callable(entry.entry_point(spec.name))


def test_default_streams_follow_the_table() -> None:
    """A new collector's stream is read by the detector and sent by every destination without being listed."""
    assert collector_streams() == [spec.stream for spec in COMPONENTS if spec.kind == "collector"]
    assert AnomalyDetectorConfig().input_streams == collector_streams()
    assert AnomalyDetectorConfig().output_stream.name == component("factoryedge.AnomalyDetector").stream
    assert PublisherConfig().metrics_stream == component("factoryedge.Publisher").stream
    assert Route().streams == published_streams()
    assert set(collector_streams()) < set(published_streams())
    assert PublisherConfig().dead_letter_stream not in published_streams()  # sending dead letters would loop


def test_an_unknown_component_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        component("factoryedge.Nope")
    assert "factoryedge.Nope" in str(raised.value)
    assert all(spec.name in str(raised.value) for spec in COMPONENTS)
