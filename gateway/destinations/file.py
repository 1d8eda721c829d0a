"""File destination: rotating JSON lines, the embedded default when no broker or cloud is configured."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.aio import Offload, finish_within
from gateway.destinations.base import DestinationConfigBase, SendResult
from gateway.destinations.payload import record_items
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import DestinationError
from gateway.record import Record


class FileConfig(DestinationConfigBase):
    """Write records as JSON lines to rotating files."""

    type: Literal["file"] = Field(default="file", description="Destination type.")
    path: str = Field(default="out/records.jsonl",
                      description="File to write; rotated files get a time suffix (.YYYYMMDDTHHMMSS.micros).")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Rotate when the file reaches this size.")
    keep: int = Field(default=5, ge=1, description="Rotated files to keep (oldest deleted; other files are never "
                      "touched, even when their names start with the file's).")
    fsync: bool = Field(default=True, description="fsync after every batch before the position moves on.")

    def build(self) -> FileDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return FileDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of the folder and the disk (see :mod:`gateway.plugin`)."""
        return await diagnose(self, timeout_s)


class FileDestination:
    def __init__(self, cfg: FileConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.path = Path(cfg.path)
        # exactly what _rotate names: an operator's records.jsonl.old or a name a glob of the path would match
        # (a path with [ or * in it) is not ours to delete
        self._rotated = re.compile(re.escape(self.path.name) + r"\.\d{8}T\d{6}\.\d{6}")
        self._offload = Offload(f"file-{cfg.name}")

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"file destination {self.name}: cannot create {self.path.parent}: {exc}",
                                   fix="set path to a writable location", retryable=True) from exc

    async def send(self, records: list[Record]) -> SendResult:
        data = b"".join(item + b"\n" for item in record_items(records))
        await self._offload(self._write, data)
        return SendResult(bytes_sent=len(data))

    def _write(self, data: bytes) -> None:
        try:
            if self.path.exists() and self.path.stat().st_size + len(data) > self.cfg.max_bytes:
                self._rotate()
            with open(self.path, "ab", buffering=0) as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:  # a short write is followed by one that raises (ENOSPC)
                        view = view[os.write(f.fileno(), view):]
                    if self.cfg.fsync:
                        os.fsync(f.fileno())
                except OSError:
                    # A write cut short (full disk) left the batch's first bytes: the retry would be appended to
                    # them and its first record glued to a fragment, unreadable. Undo it (the soak found this).
                    os.ftruncate(f.fileno(), start)
                    raise
        except OSError as exc:
            raise DestinationError(f"file destination {self.name}: cannot write {self.path}: {exc.strerror}",
                                   fix="free disk space or fix permissions; the batch will be retried",
                                   retryable=True) from exc

    def _rotate(self) -> None:
        # seconds, then microseconds within that second: names sort in time, so the oldest go first
        secs, micros = divmod(time.time_ns() // 1000, 1_000_000)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs))
        self.path.rename(self.path.with_name(f"{self.path.name}.{stamp}.{micros:06d}"))
        with os.scandir(self.path.parent) as entries:
            rotated = sorted(e.name for e in entries if self._rotated.fullmatch(e.name) and e.is_file())
        for old in rotated[: max(0, len(rotated) - self.cfg.keep)]:
            (self.path.parent / old).unlink()

    async def close(self, timeout_s: float) -> None:
        # a write in flight on a slow or hung disk (NFS, a dying SD card) is waited for off the loop, until then
        await finish_within(f"file destination {self.name}", timeout_s, self._offload.close)


async def diagnose(cfg: FileConfig, timeout_s: float) -> list[Finding]:
    """The folder exists (or can be made) and is writable, and how much disk is left for it."""
    folder = Path(cfg.path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".doctor-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        return [failed("file folder", f"{folder} is not writable: {exc.strerror}",
                       "set path to a writable location or fix the folder's permissions")]
    free = shutil.disk_usage(folder).free
    findings = [passed("file folder", f"{folder} writable")]
    need = cfg.max_bytes * (cfg.keep + 1)
    if free < need:
        findings.append(warning("disk space", f"{free // 2**20} MiB free, rotation may need {need // 2**20} MiB",
                                "free disk space or lower max_bytes / keep"))
    else:
        findings.append(passed("disk space", f"{free // 2**20} MiB free"))
    return findings
