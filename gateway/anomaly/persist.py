"""Model files: one zip per detector, versioned, written atomically.

Layout of ``<model_dir>/model.zip``::

    manifest.json        {"format": "factoryedge-anomaly-model", "format_version": 1, "saved_ns": ..., "groups": {...},
                          "assemblers": {...}, "context": {...}}   (the last two optional: added within version 1)
    forest/<group>.bin   the forest snapshot of each fitted group

Zip entries carry CRC-32, so a truncated or bit-flipped file is detected on load (:class:`ModelCorrupt`). A file of
another format version is refused (:class:`ModelVersionError`): nothing is guessed. A CRC-valid file is not trusted
either: the manifest is validated with :class:`Manifest` (a hand edit such as ``groups: []`` is refused naming the
field, not left to fail later on every restart), and the sizes the zip declares are checked against
:data:`MAX_ENTRY_BYTES` / :data:`MAX_TOTAL_BYTES` before anything is expanded (a 5 MB zip can expand to
gigabytes). Writes go to a temporary file in the same directory, are fsynced, then renamed over the old file, so a
crash mid-save leaves the previous model.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import GatewayError

FORMAT = "factoryedge-anomaly-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.zip"
# A default forest (50 trees x 256 samples, 32 dimensions) snapshots to 4.6 MB, a large one (100 x 1024, 64) to
# 70 MB; learning windows in the manifest are a few MB. The caps leave room for that and bound what a restore holds.
MAX_ENTRY_BYTES = 256 << 20
MAX_TOTAL_BYTES = 512 << 20


class ModelFileError(GatewayError):
    """A model file that cannot be used."""


class ModelVersionError(ModelFileError):
    """The model file was written by another format version."""


class ModelCorrupt(ModelFileError):
    """The model file is truncated, damaged or not a model file."""


# ---- what a manifest holds (format version 1) --------------------------------------------------------------------
# Fields added within version 1 are ignored by readers that do not know them (extra="ignore"); everything read is
# typed, so a value of the wrong type is refused here, with its place in the file, instead of deep in a restore.


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class WhitenerState(_Part):
    """The fitted input transform (see :meth:`gateway.anomaly.transform.Whitener.to_state`)."""

    mean: list[float] = Field(description="Mean of each tag on the normal data.")
    scale: list[float] = Field(description="Standard deviation of each tag (1 for constant tags).")
    rotation: list[list[float]] = Field(description="PCA rotation, tags x axes.")
    eigenvalues: list[float] = Field(description="Floored variance of each axis.")


class AlarmSaved(_Part):
    """Alarm hysteresis state."""

    active: bool = Field(description="Alarm raised.")
    run: int = Field(ge=0, description="Consecutive points disagreeing with the state.")


class CalibrationSaved(_Part):
    """How the threshold was set (see :class:`gateway.anomaly.calibration.Calibration`)."""

    method: str = Field(description="pot (tail fit) or empirical (plain quantile).")
    points: int = Field(ge=0, description="Out-of-sample values calibrated on.")
    threshold: float = Field(description="Raw forest-score threshold.")
    target_rate: float = Field(description="Configured false-alarm rate.")
    expected_rate: float = Field(description="Rate the fitted tail gives at the threshold.")
    rate_low: float = Field(description="Lower end of the ~90 % interval of the rate on new normal data.")
    rate_high: float = Field(description="Upper end of that interval.")
    folds: int = Field(default=1, ge=1, description="Time blocks the scores came from.")
    level: str = Field(default="point", description="alarm (share of time in alarm) or point (scores).")
    shape: float | None = Field(default=None, description="GPD shape of the tail.")
    tail_from: float | None = Field(default=None, description="Where the tail starts (raw score).")
    exceedances: int = Field(default=0, ge=0, description="Points over tail_from the GPD was fitted to.")
    note: str = Field(default="", description="Why the fallback was taken, if it was.")


class GroupState(_Part):
    """One group's saved model (see :meth:`gateway.anomaly.model.GroupModel.to_state`)."""

    fingerprint: dict[str, Any] = Field(description="The group settings the model depends on.")
    whitener: WhitenerState | None = Field(description="The input transform; null while learning.")
    backend: str | None = Field(description="Forest backend of the snapshot; null while learning.")
    threshold: float = Field(ge=0, description="Calibrated score threshold.")
    calibration: CalibrationSaved | None = Field(
        default=None, description="How the threshold was set; absent in models saved before it was recorded.")
    alarm: AlarmSaved = Field(description="Alarm hysteresis state.")
    learning: list[list[float]] = Field(description="Learning window collected so far (rows in tag order).")
    shingle: list[list[float]] = Field(description="Vectors in the shingle.")
    smoothing: list[list[float]] = Field(description="Vectors in the moving average.")
    features: list[list[float]] = Field(
        default_factory=list, description="Vectors in the feature window; absent in models saved before features.")
    last_ts_ns: int | None = Field(description="Time of the last vector.")
    counters: dict[str, int] = Field(
        description="Vectors scored, anomalous vectors scored and model updates (docs/counters.md).")


class AssemblerSaved(_Part):
    """A group's vector assembler (see :meth:`gateway.anomaly.assembler.VectorAssembler.to_state`)."""

    latest: dict[str, tuple[float | None, bool, int]] = Field(description="Tag -> (value, good, source time).")
    next_tick_ns: int | None = Field(description="Next cadence tick.")
    sample_due_ns: int | None = Field(description="Next on-sample vector due.")
    invalid: dict[str, int] = Field(description="Invalid-input counts by reason.")
    emitted: int = Field(ge=0, description="Vectors emitted.")


class ClockSaved(_Part):
    """The engine's clock (see :mod:`gateway.anomaly.engine`)."""

    source_ns: int | None = Field(default=None, description="Newest source time read.")
    polled_ns: int | None = Field(default=None, description="When the detector was last polled.")


class OutputSaved(_Part):
    """Where the output stream stood at the save."""

    stream: str = Field(description="Output stream name.")
    next_seq: int = Field(ge=0, description="Its next sequence number.")


class ContextSaved(_Part):
    """The owner's context: the keys the engine reads back (others are kept as they are)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    positions: dict[str, int] | None = Field(default=None, description="Input stream -> position saved with it.")
    clock: ClockSaved | None = Field(default=None, description="The engine's clock.")
    output: OutputSaved | None = Field(default=None, description="The output stream's position.")


class Manifest(_Part):
    """``manifest.json`` of format version 1."""

    format: str = Field(description=f"Always {FORMAT!r}.")
    format_version: int = Field(description=f"Always {FORMAT_VERSION}.")
    saved_ns: int = Field(description="When the model was saved (UTC ns).")
    groups: dict[str, GroupState] = Field(description="Group name -> saved model.")
    assemblers: dict[str, AssemblerSaved] | None = Field(default=None, description="Group name -> assembler.")
    context: ContextSaved | None = Field(default=None, description="The owner's context.")


def model_path(model_dir: str | Path) -> Path:
    """The model file inside ``model_dir``."""
    return Path(model_dir) / MODEL_FILE


def save(
    model_dir: str | Path,
    groups: dict[str, dict[str, Any]],
    forests: dict[str, bytes],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model atomically; returns the file path. ``extra`` adds JSON-able top-level manifest entries."""
    path = model_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        **(extra or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saved_ns": time.time_ns(),
        "groups": groups,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                zf.writestr("manifest.json", json.dumps(manifest))
                for name, blob in forests.items():
                    zf.writestr(f"forest/{name}.bin", blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def load(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read a model: (manifest, forest bytes by group name).

    Raises:
        FileNotFoundError: no model file (a fresh start).
        ModelVersionError: another format version.
        ModelCorrupt: anything else that is wrong with the file.
    """
    path = model_path(model_dir)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with zipfile.ZipFile(path) as zf:
            _check_sizes(path, zf)  # before testzip(), which expands every entry
            bad = zf.testzip()
            if bad is not None:
                raise ModelCorrupt(f"model file {path}: entry {bad} fails its CRC check", fix=_FIX_CORRUPT)
            raw = _read(zf, "manifest.json")
            manifest = json.loads(raw)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ModelCorrupt(f"{path} is not an anomaly model file", fix=_FIX_CORRUPT)
            version = manifest.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelVersionError(
                    f"model file {path} has format version {version!r}; this gateway reads version {FORMAT_VERSION}",
                    fix="re-fit with `gatewayctl anomaly fit` (or move the file away to relearn from the live "
                    "stream), or run the gateway version that wrote it",
                )
            _validate(path, raw)
            forests = {n[len("forest/") : -len(".bin")]: _read(zf, n) for n in zf.namelist() if n.startswith("forest/")}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError) as exc:
        raise ModelCorrupt(f"model file {path} is unreadable: {exc}", fix=_FIX_CORRUPT) from exc
    return manifest, forests


def _check_sizes(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse, from the sizes the zip declares, a file that would expand past the caps."""
    total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.file_size > MAX_ENTRY_BYTES or total > MAX_TOTAL_BYTES:
            what = (f"entry {info.filename} would expand to {info.file_size} bytes (cap {MAX_ENTRY_BYTES})"
                    if info.file_size > MAX_ENTRY_BYTES else
                    f"its entries would expand to more than {MAX_TOTAL_BYTES} bytes")
            raise ModelCorrupt(f"model file {path} ({path.stat().st_size} bytes): {what}; refused unread",
                               fix=_FIX_CORRUPT + " (a model of this size is not one this gateway writes)")


def _read(zf: zipfile.ZipFile, name: str) -> bytes:
    # zipfile stops at the declared size (checked above) and then checks the CRC; the limit is a second bound
    with zf.open(name) as fh:
        data = fh.read(MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"entry {name} expands past {MAX_ENTRY_BYTES} bytes")
    return data


def _validate(path: Path, raw: bytes) -> None:
    try:
        Manifest.model_validate_json(raw)  # JSON mode: strict types, arrays for tuples
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (found {_short(e['input'])})"
                             for e in exc.errors()[:5])
        raise ModelCorrupt(f"model file {path}: manifest.json does not fit format version {FORMAT_VERSION}: "
                           f"{problems}", fix=_FIX_CORRUPT) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def set_aside(model_dir: str | Path, reason: str = "corrupt") -> Path:
    """Rename a model file to ``model.zip.<reason>-<unix time>`` (kept for diagnosis); returns the new path."""
    path = model_path(model_dir)
    target = path.with_name(f"{path.name}.{reason}-{int(time.time())}")
    os.replace(path, target)
    return target


_FIX_CORRUPT = "restore a backup, re-fit with `gatewayctl anomaly fit`, or delete it to relearn from the live stream"
