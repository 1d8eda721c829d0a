"""Report-by-exception for collectors: which values of a tag are worth sending (the ``deadband`` of a connection)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from gateway.record import Quality, Value

_CODE_MASK = 0xFFFF0000  # a status code without its info bits (OPC UA Part 4, 7.39)


class Deadband(BaseModel):
    """Report-by-exception: suppress values that moved less than the deadband, but never for longer than heartbeat."""

    model_config = ConfigDict(extra="forbid")

    absolute: float | None = Field(
        default=None, ge=0, description="Suppress a numeric value within this absolute distance of the last sent."
    )
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Suppress a numeric value within this percentage of the last sent."
    )
    heartbeat_s: float = Field(
        default=60.0, gt=0, description="Send a value at least this often even if it did not change."
    )


class DeadbandFilter:
    """Decides per tag whether a value is worth sending.

    A value goes when it is the first of its tag, when its quality or status code (info bits aside) changed, when it
    moved by more than the deadband, or when ``heartbeat_s`` passed since the tag was last sent.
    """

    def __init__(self, cfg: Deadband) -> None:
        self.cfg = cfg
        self._last: dict[str, _Sent] = {}
        # Without a band any change counts, and `!=` says so directly: the comparison through floats costs more
        # than half of this filter's time on every value of a fast scan (issue 18)
        self._exact = cfg.absolute is None and cfg.percent is None
        self._heartbeat_ns = cfg.heartbeat_s * 1e9

    def accept(self, tag: str, value: Value, quality: Quality, ts_ns: int, status: int = 0) -> bool:
        code = status & _CODE_MASK  # info bits (Overflow, limits) alone are no change of state
        last = self._last.get(tag)
        if last is None:
            self._last[tag] = _Sent(value, quality, code, ts_ns)
            return True
        if (last.quality != quality or last.code != code
                or (value != last.value if self._exact else self._moved(value, last.value))
                or ts_ns - last.ts_ns >= self._heartbeat_ns):
            last.value = value
            last.quality = quality
            last.code = code
            last.ts_ns = ts_ns
            return True
        return False

    def _moved(self, value: Value, prev: Value) -> bool:
        if _numeric(value) and _numeric(prev):
            delta = abs(float(value) - float(prev))  # type: ignore[arg-type]
            within = delta == 0
            if self.cfg.absolute is not None:
                within = within or delta <= self.cfg.absolute
            if self.cfg.percent is not None:
                within = within or delta <= abs(float(prev)) * self.cfg.percent / 100  # type: ignore[arg-type]
            return not within
        return bool(value != prev)

    def due(self, now_ns: int, within_s: float) -> list[str]:
        """Tags last sent ``heartbeat_s - within_s`` or longer before ``now_ns``: their heartbeat falls before the
        next check ``within_s`` from now."""
        limit = now_ns - int((self.cfg.heartbeat_s - within_s) * 1e9)
        return [tag for tag, last in self._last.items() if last.ts_ns <= limit]

    def sent(self, tag: str, value: Value, ts_ns: int) -> None:
        """Note that ``tag`` was sent again at ``ts_ns`` (a heartbeat) with ``value`` (within the deadband of the
        last one, with the same quality and status)."""
        last = self._last.get(tag)
        if last is not None:
            last.value = value
            last.ts_ns = ts_ns


@dataclass(slots=True)
class _Sent:
    """What a tag last sent, changed in place: a new tuple for every value sent was garbage that lived about one
    scan, long enough for Python's collector to move it to older generations and sweep it there (issue 18)."""

    value: Value
    quality: Quality
    code: int  # status code without its info bits
    ts_ns: int


def _numeric(v: Value) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
