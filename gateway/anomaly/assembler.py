"""Turn a stream of per-tag records into the vectors a group scores.

The assembler keeps the latest value of each member tag. In ``cadence`` mode :meth:`VectorAssembler.poll` emits one
vector per elapsed cadence tick, built from the latest values; in ``on_sample`` mode a vector is due whenever a
member delivers a *new* value (sample-and-hold analyzers repeat the held value between samples; a repeat is not a
sample). A vector is invalid when a member is missing, BAD/UNCERTAIN, non-numeric, NaN or older than ``max_age_s``:
it is counted under its reason and never scored, because a forest fed with a frozen or fake value either alarms
for the wrong reason or, worse, learns it as normal. A member whose value is text, an array or a structure (an OPC
UA tag that is not a number) makes the vectors invalid as ``non_numeric:<tag>``; such values are counted per tag
(``non_numeric_values``) and logged once per tag, never converted and never a crash.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.anomaly.config import TagGroup
from gateway.record import Kind, Quality, Record

Array = NDArray[np.float64]
NS = 1_000_000_000
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Vector:
    """One valid assembled vector: values in the group's tag order, at ``ts_ns``."""

    ts_ns: int
    values: Array


@dataclass(slots=True)
class _Latest:
    value: float
    good: bool
    ts_ns: int
    numeric: bool = True  # False: a GOOD value that is not a number (text, array, structure)


class VectorAssembler:
    """Assemble a group's vectors from records. Not thread-safe; one per group.

    Call :meth:`offer` for every record (records of other tags are ignored), then :meth:`poll` with the current
    time to collect the vectors that became due. ``invalid`` counts dropped vectors by reason
    (``missing:<tag>``, ``bad:<tag>``, ``non_numeric:<tag>``, ``stale:<tag>``); ``non_numeric_values`` counts the
    member values that were not numbers, per tag.
    """

    def __init__(self, group: TagGroup) -> None:
        self.group = group
        self._index = {t: i for i, t in enumerate(group.tags)}
        self._latest: dict[str, _Latest] = {}
        self._next_tick_ns: int | None = None
        self._sample_due_ns: int | None = None
        self.invalid: Counter[str] = Counter()
        self.non_numeric_values: Counter[str] = Counter()
        self.emitted = 0

    def offer(self, record: Record) -> None:
        """Take a record; only VALUE records of member tags matter."""
        if record.kind != Kind.VALUE or record.tag not in self._index:
            return
        value = record.value
        numeric = value is None or isinstance(value, int | float)  # a bool is 1 or 0; None is a BAD record's
        number = float(value) if isinstance(value, int | float) else math.nan
        if not numeric:
            self._count_non_numeric(record)
        good = record.quality == Quality.GOOD and math.isfinite(number)
        prev = self._latest.get(record.tag)
        if prev is not None and record.source_ts_ns < prev.ts_ns:
            return  # late or replayed: the newer value stands
        self._latest[record.tag] = _Latest(number, good, record.source_ts_ns,
                                           numeric or record.quality != Quality.GOOD)
        if self.group.mode == "on_sample" and (prev is None or prev.value != number or prev.good != good):
            self._sample_due_ns = max(self._sample_due_ns or 0, record.source_ts_ns)

    def _count_non_numeric(self, record: Record) -> None:
        tag = record.tag
        if not self.non_numeric_values[tag]:
            log.warning("anomaly group %r: tag %s carries a %s value, not a number: its vectors are not scored while "
                        "it does (counted as non_numeric:%s). Fix: leave the tag out of the group, or collect a "
                        "numeric element of it (e.g. one tag per array element)", self.group.name, tag,
                        type(record.value).__name__, tag)
        self.non_numeric_values[tag] += 1

    def poll(self, now_ns: int) -> list[Vector]:
        """Vectors due at ``now_ns`` (at most one per cadence tick, ticks aligned to whole multiples)."""
        if self.group.mode == "on_sample":
            if self._sample_due_ns is None:
                return []
            due, self._sample_due_ns = self._sample_due_ns, None
            return self._assemble([due])
        step = int(self.group.cadence_s * NS)
        if self._next_tick_ns is None:
            self._next_tick_ns = (now_ns // step) * step
        ticks: list[int] = []
        while self._next_tick_ns <= now_ns:
            ticks.append(self._next_tick_ns)
            self._next_tick_ns += step
        # After a long pause only the newest tick can be built from current values; older ones are not invented.
        return self._assemble(ticks[-1:]) if ticks else []

    def _assemble(self, ticks: list[int]) -> list[Vector]:
        out: list[Vector] = []
        max_age = int(self.group.max_age_s * NS)
        for tick in ticks:
            values = np.empty(len(self._index))
            reason = None
            for tag, i in self._index.items():
                latest = self._latest.get(tag)
                if latest is None:
                    reason = f"missing:{tag}"
                elif not latest.good:
                    reason = f"bad:{tag}" if latest.numeric else f"non_numeric:{tag}"
                elif tick - latest.ts_ns > max_age:
                    reason = f"stale:{tag}"
                else:
                    values[i] = latest.value
                    continue
                break
            if reason is not None:
                self.invalid[reason] += 1
            else:
                out.append(Vector(tick, values))
                self.emitted += 1
        return out

    def to_state(self) -> dict[str, Any]:
        """JSON-able state (latest values, next tick, counters), saved with the model so that a restart assembles
        the next vector exactly as an uninterrupted run would."""
        return {
            "latest": {
                t: [v.value if math.isfinite(v.value) else None, v.good, v.ts_ns] for t, v in self._latest.items()
            },
            "next_tick_ns": self._next_tick_ns,
            "sample_due_ns": self._sample_due_ns,
            "invalid": dict(self.invalid),
            "emitted": self.emitted,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`to_state` (values of tags no longer in the group are dropped)."""
        self._latest = {
            t: _Latest(math.nan if v is None else float(v), bool(good), int(ts))
            for t, (v, good, ts) in state["latest"].items()
            if t in self._index
        }
        self._next_tick_ns = None if state["next_tick_ns"] is None else int(state["next_tick_ns"])
        self._sample_due_ns = None if state["sample_due_ns"] is None else int(state["sample_due_ns"])
        self.invalid = Counter({str(k): int(n) for k, n in state["invalid"].items()})
        self.emitted = int(state["emitted"])

    def missing_tags(self) -> list[str]:
        """Member tags that never delivered a record (reported so a typo in the config is visible)."""
        return [t for t in self.group.tags if t not in self._latest]


class _Window:
    """The last ``size`` vectors, saved with the model so a restart continues where it stopped."""

    def __init__(self, size: int, history: list[list[float]] | None = None) -> None:
        self.size = size
        self._buf: deque[Array] = deque((np.asarray(h, dtype=np.float64) for h in history or []), maxlen=size)

    def push(self, x: Array) -> Array | None:
        """Add a vector; return the window's combination once ``size`` vectors were seen, else None."""
        self._buf.append(x)
        if len(self._buf) < self.size:
            return None
        return self._combine(x)

    def _combine(self, newest: Array) -> Array:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget history (after a gap: a window must hold consecutive vectors)."""
        self._buf.clear()

    def state(self) -> list[list[float]]:
        return [b.tolist() for b in self._buf]


class Shingler(_Window):
    """Concatenate the last ``size`` vectors, newest last. Full only after ``size`` vectors."""

    def _combine(self, newest: Array) -> Array:
        return np.concatenate(list(self._buf))


class Smoother(_Window):
    """Moving average of the last ``size`` vectors (``size`` 1: the vector itself). Full only after ``size`` vectors."""

    def _combine(self, newest: Array) -> Array:
        return newest if self.size == 1 else np.mean(np.stack(list(self._buf)), axis=0)
