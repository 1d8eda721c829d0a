"""Configuration models of the anomaly library: tag groups, forest settings, the detector.

One :class:`TagGroup` is one random cut forest scoring one vector of tags. The models are the single source of
truth: the CLI, the component and the docs read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway import components
from gateway.anomaly.featurespec import Feature, levels_only, window_of, windowed
from gateway.componentbase import ComponentBase
from gateway.errors import ConfigError
from gateway.streams import StreamSpec

DEFAULT_FOLDS = 5


class ForestSettings(BaseModel):
    """Random cut forest settings of one group."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["krcf", "rrcf"] = Field(
        "krcf", description="krcf (AWS's Rust RCF, default) or rrcf (pure Python, ~150x slower)."
    )
    trees: int = Field(50, ge=1, le=1000, description="Number of trees; cost is linear in trees.")
    samples_per_tree: int = Field(256, ge=16, le=8192, description="Points kept by each tree's sampler.")
    seed: int = Field(42, ge=0, description="Random seed, so that a fit is reproducible.")


class TagGroup(BaseModel):
    """A set of tags scored together by one forest."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Group name; used in output tag and column names (score_<name>).",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    tags: list[str] = Field(min_length=1, description="Member tags (record tag names, or CSV column names).")
    shingle: int = Field(1, ge=1, le=64, description="Consecutive vectors concatenated into one forest point.")
    smoothing: int = Field(
        1,
        ge=1,
        le=1000,
        description="Moving average over this many consecutive vectors before whitening; above 1 it lifts small "
        "persistent shifts out of sample noise, at the cost of about half a window of delay.",
    )
    features: list[Feature] = Field(
        default_factory=levels_only,
        min_length=1,
        description="What each member tag contributes to the vector, over the last feature_window vectors (after "
        "smoothing): level (the newest value), std (standard deviation over the window: variability) and delta "
        "(newest minus oldest: drift). [level] scores levels only, with no window.",
    )
    feature_window: int = Field(
        10,
        ge=2,
        le=1000,
        description="Vectors over which std and delta are taken (only with features other than level alone); the "
        "first feature vector comes after this many.",
    )
    forest: ForestSettings = Field(default_factory=ForestSettings, description="Forest settings.")
    mode: Literal["cadence", "on_sample"] = Field(
        "cadence",
        description="cadence: assemble every cadence_s from the latest good values; on_sample: assemble when a "
        "member delivers a new value (sample-and-hold analyzers).",
    )
    cadence_s: float = Field(1.0, gt=0, description="Seconds between vectors in cadence mode.")
    max_age_s: float = Field(
        5.0, gt=0, description="A member value older than this makes the vector invalid (stale): counted, not scored."
    )
    false_alarm_rate: float = Field(
        0.005,
        gt=0,
        lt=0.5,
        description="Share of scored points on normal data like the training window allowed above the threshold "
        "(the share of time in alarm is about the same or lower); sets the threshold.",
    )
    update_below: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="Gated updates: the forest learns a point only when its score is below this fraction of the "
        "threshold (and no alarm is raised); below 1.0 a slowly growing fault is not learned on its way up.",
    )
    raise_after: int = Field(3, ge=1, description="Consecutive anomalous points that raise the alarm.")
    clear_after: int = Field(5, ge=1, description="Consecutive normal points that clear the alarm.")
    training_points: int = Field(
        1000, ge=50, description="Vectors collected from the live stream before fitting (learning window)."
    )
    calibration_share: float = Field(
        0.33,
        gt=0.05,
        lt=0.9,
        description="Not used any more: thresholds are cross-fitted over the whole window (calibration_folds); "
        "accepted so that configurations and model folders written before still load.",
    )
    calibration_folds: int = Field(
        DEFAULT_FOLDS,
        ge=2,
        le=20,
        description="Blocks of time the training window is cut into for the threshold: each block is scored by a "
        "transform and forest fitted on the other blocks, and the threshold is set from all these out-of-sample "
        "scores (fewer blocks when the window is short; see docs/anomaly.md, thresholds).",
    )
    eigen_floor: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="Smallest eigenvalue used in whitening, relative to the largest; keeps constant or collinear "
        "tags from dividing by zero.",
    )
    top_tags: int = Field(3, ge=1, le=20, description="Tags named in an alarm's attribution.")

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        seen = {t for t in tags if tags.count(t) > 1}
        if seen:
            raise ValueError(f"tags listed twice: {sorted(seen)}")
        return tags

    @field_validator("features", mode="before")
    @classmethod
    def _known_features(cls, features: object) -> object:
        # before the type check, so that a misspelt name gets the list of names instead of a bare enum error
        if isinstance(features, list):
            unknown = [f for f in features if f not in ("level", "std", "delta")]
            if unknown:
                raise ValueError(f"unknown feature(s) {unknown}: use level, std and/or delta, e.g. [level, std, delta]")
            twice = sorted({f for f in features if features.count(f) > 1})
            if twice:
                raise ValueError(f"features listed twice: {twice}; list each once")
        return features

    @field_validator("feature_window", mode="before")
    @classmethod
    def _window_of_two(cls, window: object) -> object:
        if isinstance(window, int) and not isinstance(window, bool) and window < 2:
            raise ValueError(
                f"feature_window {window} is too short: a standard deviation or a difference needs at least 2 "
                "vectors; use 2 or more (e.g. 10)"
            )
        return window

    @model_validator(mode="after")
    def _enough_training(self) -> TagGroup:
        need = min_training_vectors(self)
        if self.training_points < need:
            raise ValueError(
                f"training_points {self.training_points} is too few for {len(self.tags)} tags, shingle "
                f"{self.shingle}, smoothing {self.smoothing}{_features_text(self)}: use at least {need}"
            )
        return self

    def fingerprint(self) -> dict[str, object]:
        """What a fitted model depends on; a change means the group must learn again.

        The other settings (``max_age_s``, ``update_below``, ``raise_after``, ``clear_after``, ``top_tags``) act at
        scoring time: changing them keeps the model.
        """
        return {
            "tags": list(self.tags),
            "shingle": self.shingle,
            "smoothing": self.smoothing,
            "forest": self.forest.model_dump(),
            "mode": self.mode,
            "cadence_s": self.cadence_s,
            "false_alarm_rate": self.false_alarm_rate,
            "training_points": self.training_points,
            "calibration_share": self.calibration_share,
            "eigen_floor": self.eigen_floor,
            # settings added after models were first saved appear only when set, so that those models still match
            **({"calibration_folds": self.calibration_folds} if self.calibration_folds != DEFAULT_FOLDS else {}),
            **(
                {"features": list(self.features), "feature_window": self.feature_window}
                if windowed(self.features)
                else {}
            ),
        }


class AnomalyConfig(BaseModel):
    """All groups of one detector, plus persistence settings."""

    model_config = ConfigDict(extra="forbid")

    groups: list[TagGroup] = Field(min_length=1, description="Tag groups, each scored by its own forest.")
    save_interval_s: float = Field(300.0, gt=0, description="Seconds between periodic model saves.")
    output_prefix: str = Field("anomaly", description="Prefix of output tags: <prefix>/<group>/score, /alarm, /state.")

    @model_validator(mode="after")
    def _unique_names(self) -> AnomalyConfig:
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"group names used twice: {dupes}")
        return self


class AlarmEvents(BaseModel):
    """Where the component publishes alarm raise/clear events (JSON) when it runs under Greengrass.

    Topics may use ``{thing}`` (the Greengrass thing name, ``AWS_IOT_THING_NAME``) and ``{group}``. The recipe's
    ``accessControl`` must allow them (PublishToIoTCore under ``aws.greengrass.ipc.mqttproxy``, PublishToTopic
    under ``aws.greengrass.ipc.pubsub``). The alarm records in the output stream are the durable copy; these events
    are the fast path for local consumers and the cloud.
    """

    model_config = ConfigDict(extra="forbid")

    iot_core_topic: str | None = Field(
        "factoryedge/{thing}/alarms/{group}",
        description="AWS IoT Core topic of alarm events; null publishes none to IoT Core.",
    )
    iot_core_qos: Literal[0, 1] = Field(1, description="MQTT QoS of the IoT Core events (QoS 0 is dropped offline).")
    local_topic: str | None = Field(
        "factoryedge/alarms/{group}", description="Local pub/sub topic of alarm events; null publishes none locally."
    )

    @field_validator("iot_core_topic", "local_topic")
    @classmethod
    def _placeholders(cls, topic: str | None) -> str | None:
        if topic is not None:
            try:
                topic.format(thing="t", group="g")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"topic {topic!r}: only {{thing}} and {{group}} may be used ({exc!r})") from exc
            if not topic or any(c in topic for c in "+#"):
                raise ValueError(f"topic {topic!r} must be non-empty and free of MQTT wildcards (+, #)")
        return topic


def min_training_vectors(group: TagGroup) -> int:
    """Valid vectors a fit needs: at least two calibration blocks (:func:`min_block_vectors` each), and the blocks
    other than one enough for the transform (2 vectors per tag)."""
    head, block = fit_vectors(group), min_block_vectors(group)
    need = min(max(k * block, -(-head * k // (k - 1))) for k in range(2, group.calibration_folds + 1))
    # the moving average eats smoothing - 1 vectors at the start, the feature window feature_window - 1 more
    return need + group.smoothing - 1 + window_of(group.features, group.feature_window) - 1


def fit_vectors(group: TagGroup) -> int:
    """Vectors the transform (2 per column: tags x features) and the forest need, after smoothing and features."""
    return max(2 * len(group.tags) * len(group.features) + 10, 30) + group.shingle


def _features_text(group: TagGroup) -> str:
    if not windowed(group.features):
        return ""
    return f", features {list(group.features)} over {group.feature_window} vectors"


def min_block_vectors(group: TagGroup) -> int:
    """Smallest calibration block: 30 scored points once its shingle has filled."""
    return 30 + group.shingle - 1


def load_config(path: str | Path) -> AnomalyConfig:
    """Read a groups YAML (or JSON) file.

    Raises:
        ConfigError: unreadable file or invalid content, one line per bad field.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read anomaly config {p}: {exc}", fix="check the path and YAML syntax") from exc
    try:
        return AnomalyConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid anomaly config {p}", problems=problems, fix="correct the fields listed") from exc


class AnomalyDetectorConfig(ComponentBase):
    """factoryedge.AnomalyDetector (tag groups: :class:`gateway.anomaly.config.TagGroup`, docs/anomaly.md)."""

    input_streams: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_ ,.\-]{1,255}$")]] = Field(
        default_factory=components.collector_streams,
        description="Collector streams to read, each from this component's own durable position; a stream that "
        "does not exist yet is waited for.",
    )
    output_stream: StreamSpec = Field(
        default_factory=lambda: StreamSpec(name=components.component("factoryedge.AnomalyDetector").stream),
        description="Stream the score, alarm, attribution and state records are written to.",
    )
    start_from: Literal["latest", "oldest"] = Field(
        default="latest",
        description="Where a stream this component never read is started: latest (learn from the live data after "
        "deployment) or oldest (also learn from what the stream retains).",
    )
    model_dir: str = Field(
        default="anomaly-model",
        description="Folder of the saved model (model.zip), relative to the working directory (the component's "
        "work path under Greengrass); `gatewayctl anomaly fit --model` writes one to start already scoring.",
    )
    groups: list[TagGroup] = Field(default_factory=list, description="Tag groups, each scored by its own forest.")
    save_interval_s: float = Field(default=300.0, gt=0, description="Seconds between periodic model saves.")
    output_prefix: str = Field(
        default="anomaly", description="Prefix of output tags: <prefix>/<group>/score, /alarm, /attribution, /state."
    )
    late_s: float = Field(
        default=2.0,
        ge=0,
        description="When no new records arrive, the detector's clock keeps moving this many seconds behind the "
        "wall clock, so that members that stopped are reported stale.",
    )
    alarms: AlarmEvents = Field(default_factory=AlarmEvents, description="Alarm events over Greengrass IPC.")
    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the detector's counters (read, written, dropped, lost) are "
        "written to the output stream as METRIC records."
    )

    def detector_config(self) -> AnomalyConfig | None:
        """The library configuration of the groups, or None when no group is configured."""
        if not self.groups:
            return None
        return AnomalyConfig(
            groups=self.groups, save_interval_s=self.save_interval_s, output_prefix=self.output_prefix
        )

    @model_validator(mode="after")
    def _valid_groups(self) -> AnomalyDetectorConfig:
        self.detector_config()  # group names used twice fail here, as in a groups file
        return self
