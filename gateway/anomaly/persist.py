"""Model files: one zip per detector, versioned, written atomically.

Layout of ``<model_dir>/model.zip``::

    manifest.json        {"format": "factoryedge-anomaly-model", "format_version": 1, "saved_ns": ..., "groups": {...},
                          "assemblers": {...}, "context": {...}}   (the last two optional: added within version 1)
    forest/<group>.bin   the forest snapshot of each fitted group

Zip entries carry CRC-32, so a truncated or bit-flipped file is detected on load (:class:`ModelCorrupt`). A file of
another format version is refused (:class:`ModelVersionError`): nothing is guessed. Writes go to a temporary file
in the same directory, are fsynced, then renamed over the old file, so a crash mid-save leaves the previous model.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

FORMAT = "factoryedge-anomaly-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.zip"


class ModelFileError(GatewayError):
    """A model file that cannot be used."""


class ModelVersionError(ModelFileError):
    """The model file was written by another format version."""


class ModelCorrupt(ModelFileError):
    """The model file is truncated, damaged or not a model file."""


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
            bad = zf.testzip()
            if bad is not None:
                raise ModelCorrupt(f"model file {path}: entry {bad} fails its CRC check", fix=_FIX_CORRUPT)
            manifest = json.loads(zf.read("manifest.json"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ModelCorrupt(f"{path} is not an anomaly model file", fix=_FIX_CORRUPT)
            version = manifest.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelVersionError(
                    f"model file {path} has format version {version!r}; this gateway reads version {FORMAT_VERSION}",
                    fix="re-fit with `gatewayctl anomaly fit` (or move the file away to relearn from the live "
                    "stream), or run the gateway version that wrote it",
                )
            forests = {n[len("forest/") : -len(".bin")]: zf.read(n) for n in zf.namelist() if n.startswith("forest/")}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError) as exc:
        raise ModelCorrupt(f"model file {path} is unreadable: {exc}", fix=_FIX_CORRUPT) from exc
    return manifest, forests


def set_aside(model_dir: str | Path, reason: str = "corrupt") -> Path:
    """Rename a model file to ``model.zip.<reason>-<unix time>`` (kept for diagnosis); returns the new path."""
    path = model_path(model_dir)
    target = path.with_name(f"{path.name}.{reason}-{int(time.time())}")
    os.replace(path, target)
    return target


_FIX_CORRUPT = "restore a backup, re-fit with `gatewayctl anomaly fit`, or delete it to relearn from the live stream"
