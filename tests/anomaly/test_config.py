"""Config models: strict, and a learning window that cannot fit is refused up front, not mid-stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.anomaly import AnomalyConfig, TagGroup, load_config
from gateway.errors import ConfigError


def test_a_training_window_too_short_for_the_group_is_refused_at_load() -> None:
    tags = [f"t{i}" for i in range(40)]
    with pytest.raises(ValidationError, match=r"training_points 100 is too few for 40 tags.*use at least \d+"):
        TagGroup(name="big", tags=tags, training_points=100)


def test_unknown_fields_and_duplicates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="extra"):
        TagGroup.model_validate({"name": "g", "tags": ["a"], "shingel": 4})
    with pytest.raises(ValidationError, match="listed twice"):
        TagGroup(name="g", tags=["a", "a"])
    with pytest.raises(ValidationError, match="used twice"):
        AnomalyConfig.model_validate({"groups": [{"name": "g", "tags": ["a"]}, {"name": "g", "tags": ["b"]}]})
    bad = tmp_path / "g.yaml"
    bad.write_text("groups:\n  - name: g\n    tags: [a]\n    cadence_s: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "groups.0.cadence_s" in str(info.value)


def test_every_field_is_described() -> None:
    from gateway.anomaly.config import AlarmEvents, ForestSettings
    from gateway.componentconfig import AnomalyDetectorConfig

    for model in (AnomalyConfig, TagGroup, ForestSettings, AlarmEvents, AnomalyDetectorConfig):
        undocumented = [n for n, f in model.model_fields.items() if not f.description]
        assert undocumented == [], model.__name__


def test_component_config_refuses_bad_topics_and_duplicate_groups() -> None:
    from gateway.componentconfig import AnomalyDetectorConfig

    with pytest.raises(ValidationError, match=r"only \{thing\} and \{group\}"):
        AnomalyDetectorConfig.model_validate({"alarms": {"local_topic": "alarms/{site}"}})
    with pytest.raises(ValidationError, match="wildcards"):
        AnomalyDetectorConfig.model_validate({"alarms": {"iot_core_topic": "factoryedge/+/alarms"}})
    with pytest.raises(ValidationError, match="used twice"):
        AnomalyDetectorConfig.model_validate({"groups": [{"name": "g", "tags": ["a"]}, {"name": "g", "tags": ["b"]}]})
    assert AnomalyDetectorConfig().detector_config() is None  # the default: waits for a deployment with groups
