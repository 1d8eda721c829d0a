"""Plant models behind one small interface.

``TepPlant`` is the real closed-loop Tennessee Eastman process (the revised model of Bathelt, Ricker & Jelali,
run by ``tep-studio`` with Ricker's decentralized controller). ``SyntheticPlant`` holds the Downs & Vogel base case
with measurement noise and analyzer sample-and-hold; it needs nothing but the standard library and is meant for
tests that exercise endpoints rather than process behaviour.

Besides the model's disturbances (``set_idv``), both plants take one actuator fault: ``hold_xmv`` sticks a valve
where it is, whatever the controller asks. The widely used TEP benchmark data set's IDV 21 is exactly that (the
stream 4 valve, XMV 4, fixed at its steady-state position), whereas the revised model's IDV 21 is a random variation
of the A feed temperature that no measurement sees: ``hold_xmv(4, True)`` on a settled plant reproduces the
benchmark's fault.

Both are single-threaded objects: the caller serialises access (``simulator.runtime`` holds a lock).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Disturbance numbers the revised model knows: 1-20 of Downs & Vogel, 21-28 added by Bathelt et al.
IDV_NUMBERS: tuple[int, ...] = tuple(range(1, 29))

#: Downs & Vogel (1993) base case, mode 1: XMEAS(1..41).
BASE_XMEAS: tuple[float, ...] = (
    0.25052, 3664.0, 4509.3, 9.3477, 26.902, 42.339, 2705.0, 75.0, 120.40, 0.33712,
    80.109, 50.0, 2633.7, 25.160, 50.0, 3102.2, 22.949, 65.731, 230.31, 341.43,
    94.599, 77.297, 32.188, 8.8933, 26.383, 6.8820, 18.776, 1.6567, 32.958, 13.823,
    23.978, 1.2565, 18.579, 2.2633, 4.8436, 2.2986, 0.01787, 0.83570, 0.09858, 53.724,
    43.828,
)  # fmt: skip

#: Downs & Vogel (1993) base case, mode 1: XMV(1..12) in percent.
BASE_XMV: tuple[float, ...] = (
    63.053, 53.980, 24.644, 61.302, 22.210, 40.064, 38.100, 46.534, 47.446, 41.106, 18.114, 50.0,
)

#: Analyzer groups as (first XMEAS, last XMEAS, sampling period s, dead time s) per Downs & Vogel.
ANALYZERS: tuple[tuple[int, int, float, float], ...] = ((23, 28, 360.0, 360.0), (29, 36, 360.0, 360.0),
                                                        (37, 41, 900.0, 900.0))


def check_idv(n: int) -> int:
    """Return ``n`` if it is a disturbance number the model knows.

    Raises:
        ValueError: naming the valid numbers.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n not in IDV_NUMBERS:
        raise ValueError(
            f"unknown disturbance IDV {n!r}: valid numbers are {IDV_NUMBERS[0]}-{IDV_NUMBERS[-1]} "
            "(1-20 Downs & Vogel, 21-28 revised model)"
        )
    return n


class Plant(Protocol):
    """A Tennessee Eastman plant advancing in fixed steps.

    Contract: ``reset`` must be called before the first ``step``; after a shutdown ``step`` is a no-op (time
    stops) until ``reset``. ``xmeas``/``xmv`` are views valid until the next ``step`` or ``reset``.
    """

    step_s: float

    @property
    def t_s(self) -> float: ...
    @property
    def xmeas(self) -> Sequence[float]: ...
    @property
    def xmv(self) -> Sequence[float]: ...
    @property
    def active_idvs(self) -> frozenset[int]: ...
    @property
    def shutdown(self) -> bool: ...
    @property
    def shutdown_reason(self) -> str | None: ...

    @property
    def requested_xmv(self) -> Sequence[float]: ...
    @property
    def held_xmvs(self) -> frozenset[int]: ...

    def reset(self, seed: int) -> None: ...
    def step(self) -> None: ...
    def set_idv(self, n: int, on: bool) -> None: ...
    def hold_xmv(self, n: int, on: bool) -> None: ...


class _PlantState:
    """The state both plants keep and expose the same way (the read side of :class:`Plant`)."""

    def __init__(self, step_s: float) -> None:
        self.step_s = float(step_s)
        self._xmeas: list[float] = list(BASE_XMEAS)
        self._xmv: list[float] = list(BASE_XMV)
        self._requested: list[float] = list(BASE_XMV)
        self._held: dict[int, float] = {}  # XMV number -> the position it is stuck at
        self._t_s = 0.0
        self._reason: str | None = None

    @property
    def t_s(self) -> float:
        return self._t_s

    @property
    def xmeas(self) -> Sequence[float]:
        return self._xmeas

    @property
    def xmv(self) -> Sequence[float]:
        return self._xmv

    @property
    def requested_xmv(self) -> Sequence[float]:
        """What the controller (or, synthetic, the noise) asks of each valve; ``xmv`` is what is implemented."""
        return self._requested

    @property
    def held_xmvs(self) -> frozenset[int]:
        return frozenset(self._held)

    def hold_xmv(self, n: int, on: bool) -> None:
        """Stick valve XMV ``n`` (1-12) at its present position (``on``), or free it to follow requests again.

        Holding an already held valve keeps its first position. The controller is not told: it keeps asking, as
        it would of a real stuck valve (its integral action winds up, so freeing the valve bumps the plant).

        Raises:
            ValueError: naming the valid numbers.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(BASE_XMV):
            raise ValueError(f"unknown valve XMV {n!r}: valid numbers are 1-{len(BASE_XMV)}")
        if on:
            self._held.setdefault(n, self._xmv[n - 1])
        else:
            self._held.pop(n, None)

    def _apply_holds(self, values: Any) -> None:
        """Put every held valve's position into ``values`` (a list, or the controller's numpy action)."""
        for n, position in self._held.items():
            values[n - 1] = position

    @property
    def shutdown(self) -> bool:
        return self._reason is not None

    @property
    def shutdown_reason(self) -> str | None:
        return self._reason


class TepPlant(_PlantState):
    """The revised TEP model in closed loop with Ricker's decentralized controller (``tep-studio``).

    Args:
        step_s: simulated seconds per step. 1 s is the default; the integrator's sub-step is 1.8 s, so steps
            up to 1.8 s cost the same CPU each and are the fastest way to generate long datasets.
    """

    def __init__(self, step_s: float = 1.0) -> None:
        # Imported here so the rest of the simulator (and the synthetic plant) works without tep-studio.
        try:
            import numpy as np
            from tep_studio import RickerMultiLoopController, TennesseeEastmanProcess
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "the real TEP model needs tep-studio: pip install 'tep-studio==0.2.0' (or use --plant synthetic)"
            ) from exc
        super().__init__(step_s)
        self._np = np
        self._controller_cls = RickerMultiLoopController
        self._sim = TennesseeEastmanProcess()
        self._controller: Any = None
        self._idv = np.zeros(len(IDV_NUMBERS), dtype=np.float64)
        self._meas: Any = None

    @property
    def active_idvs(self) -> frozenset[int]:
        return frozenset(i + 1 for i, v in enumerate(self._idv) if v)

    def reset(self, seed: int) -> None:
        """Start again from the base case with a new noise seed; disturbances and held valves are cleared."""
        self._idv[:] = 0.0
        self._held.clear()
        meas, _ = self._sim.reset(seed=float(seed), disturbances=self._idv)
        self._controller = self._controller_cls()
        self._controller.reset(meas, time=0.0)
        self._meas = meas
        self._xmeas = meas.tolist()
        self._xmv = self._sim.state[38:50].tolist()
        self._requested = list(self._xmv)
        self._t_s = 0.0
        self._reason = None

    def step(self) -> None:
        """Advance one step: controller action from the last measurements, then integrate the plant."""
        if self._reason is not None:
            return
        hours = self._t_s / 3600.0
        action, _ = self._controller.compute_action(self._meas, time=hours)
        self._requested = action.tolist()
        if self._held:
            action = action.copy()
            self._apply_holds(action)
        result = self._sim.advance(action, control_interval=self.step_s / 3600.0, disturbances=self._idv)
        self._meas = result.measurements
        self._xmeas = self._meas.tolist()
        self._xmv = result.implemented_action.tolist()
        self._t_s += self.step_s
        status = result.shutdown_status
        if status["terminated"]:
            self._reason = str(status["message"]).strip() or f"plant shutdown (code {status['code']})"

    def set_idv(self, n: int, on: bool) -> None:
        self._idv[check_idv(n) - 1] = 1.0 if on else 0.0


# Synthetic disturbance effects: IDV -> ((index into xmeas+xmv, full-scale deviation), ...). Deviations are
# approximate closed-loop responses so the right tags move (NOTES section 10), not a model.
_XMV0 = len(BASE_XMEAS)
_SYNTHETIC_EFFECTS: dict[int, tuple[tuple[int, float], ...]] = {
    1: ((0, -0.05), (3, 0.6), (22, -1.5), (24, 1.2), (28, -1.6), (30, 1.8)),
    2: ((23, 0.4), (29, 0.5), (35, 0.3)),
    4: ((_XMV0 + 9, 6.0), (20, 0.4)),
    5: ((_XMV0 + 10, 4.0), (21, 0.3)),
    6: ((0, -0.25), (_XMV0 + 2, 55.0), (6, 150.0), (14, -45.0)),
    7: ((_XMV0 + 3, 6.0),),
    13: ((6, 30.0), (39, -1.0)),
    14: ((8, 0.3), (20, 1.0), (_XMV0 + 9, 4.0)),
    16: ((14, 3.0), (17, 0.6), (_XMV0 + 8, 5.0)),
}
_SYNTHETIC_TAU_S = 600.0
_SYNTHETIC_TRIP_AFTER_S = 7.5 * 3600.0  # IDV 6 trips the real plant ~7.5 h after onset


class SyntheticPlant(_PlantState):
    """Base-case values with Gaussian noise, analyzer sample-and-hold and crude disturbance responses.

    Deterministic for a seed and disturbance schedule. IDV 6 trips it 7.5 h after onset, like the real plant.
    """

    def __init__(self, step_s: float = 1.0) -> None:
        super().__init__(step_s)
        self._rng = random.Random(0)
        self._onset: dict[int, float] = {}

    @property
    def active_idvs(self) -> frozenset[int]:
        return frozenset(self._onset)

    def reset(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._xmeas = list(BASE_XMEAS)
        self._xmv = list(BASE_XMV)
        self._requested = list(BASE_XMV)
        self._held.clear()
        self._onset = {}
        self._t_s = 0.0
        self._reason = None

    def set_idv(self, n: int, on: bool) -> None:
        check_idv(n)
        if on:
            self._onset.setdefault(n, self._t_s)
        else:
            self._onset.pop(n, None)

    def step(self) -> None:
        if self._reason is not None:
            return
        self._t_s += self.step_s
        offsets = [0.0] * (len(BASE_XMEAS) + len(BASE_XMV))
        for n, onset in self._onset.items():
            weight = 1.0 - math.exp(-(self._t_s - onset) / _SYNTHETIC_TAU_S)
            for index, deviation in _SYNTHETIC_EFFECTS.get(n, ()):
                offsets[index] += weight * deviation
        gauss = self._rng.gauss
        analyzer = _analyzer_indexes()
        for i, base in enumerate(BASE_XMEAS):
            if i not in analyzer:
                self._xmeas[i] = base + offsets[i] + gauss(0.0, 0.002 * abs(base))
        for first, last, period, _dead in ANALYZERS:
            if self._t_s % period < self.step_s:  # a new analysis arrives; values hold in between
                for i in range(first - 1, last):
                    self._xmeas[i] = BASE_XMEAS[i] + offsets[i] + gauss(0.0, 0.005 * abs(BASE_XMEAS[i]))
        for j, base in enumerate(BASE_XMV[:11]):
            self._requested[j] = min(100.0, max(0.0, base + offsets[_XMV0 + j] + gauss(0.0, 0.2)))
        self._xmv = list(self._requested)
        self._apply_holds(self._xmv)  # no process response to a stuck valve here: only the valve itself is held
        onset6 = self._onset.get(6)
        if onset6 is not None and self._t_s - onset6 >= _SYNTHETIC_TRIP_AFTER_S:
            self._reason = "Stripper liquid level too low"


def _analyzer_indexes() -> frozenset[int]:
    return _ANALYZER_INDEXES


_ANALYZER_INDEXES = frozenset(i - 1 for first, last, _p, _d in ANALYZERS for i in range(first, last + 1))


def make_plant(kind: str, step_s: float = 1.0) -> Plant:
    """Build a plant by name: ``"tep"`` (the real model) or ``"synthetic"``."""
    if kind == "tep":
        return TepPlant(step_s)
    if kind == "synthetic":
        return SyntheticPlant(step_s)
    raise ValueError(f"unknown plant {kind!r}: use 'tep' or 'synthetic'")


@dataclass(frozen=True)
class IdvEvent:
    """Switch disturbance ``idv`` on or off when simulated time reaches ``at_s``."""

    at_s: float
    idv: int
    on: bool = True

    def __post_init__(self) -> None:
        check_idv(self.idv)


@dataclass(frozen=True)
class XmvHoldEvent:
    """Stick valve ``xmv`` at its position (``on``) or free it when simulated time reaches ``at_s``."""

    at_s: float
    xmv: int
    on: bool = True


@dataclass(frozen=True)
class Sample:
    """One row of a dataset: the plant after ``t_s`` simulated seconds."""

    t_s: float
    xmeas: tuple[float, ...]
    xmv: tuple[float, ...]
    active_idvs: frozenset[int]
    shutdown: bool


def apply_due(plant: Plant, schedule: Sequence[IdvEvent | XmvHoldEvent], next_index: int) -> int:
    """Apply the schedule's events due at the plant's time (schedule sorted by time); return the next index."""
    while next_index < len(schedule) and schedule[next_index].at_s <= plant.t_s + 1e-9:
        event = schedule[next_index]
        if isinstance(event, XmvHoldEvent):
            plant.hold_xmv(event.xmv, event.on)
        else:
            plant.set_idv(event.idv, event.on)
        next_index += 1
    return next_index


def run_plant(
    plant: Plant, seconds: float, sample_every_s: float, schedule: Iterable[IdvEvent | XmvHoldEvent] = ()
) -> Iterator[Sample]:
    """Step ``plant`` for ``seconds`` of simulated time, yielding a sample every ``sample_every_s``.

    The plant is used as it is (call ``reset`` first). The first sample is at the current time; stepping stops
    early when the plant shuts down, and that last sample has ``shutdown=True``.

    Example: a 48 h IDV 6 run with 3-minute samples::

        plant = TepPlant(); plant.reset(seed=1)
        rows = list(run_plant(plant, 48 * 3600, 180, [IdvEvent(8 * 3600, 6)]))

    The benchmark data set's IDV 21 (the stream 4 valve stuck) on a settled plant: ``[XmvHoldEvent(8 * 3600, 4)]``.
    """
    events = sorted(schedule, key=lambda e: e.at_s)
    index = apply_due(plant, events, 0)
    end = plant.t_s + seconds
    next_sample = plant.t_s
    eps = plant.step_s * 1e-6
    while True:
        if plant.t_s + eps >= next_sample:
            yield Sample(plant.t_s, tuple(plant.xmeas), tuple(plant.xmv), plant.active_idvs, plant.shutdown)
            next_sample += sample_every_s
        if plant.shutdown or plant.t_s + eps >= end:
            return
        plant.step()
        index = apply_due(plant, events, index)
        if plant.shutdown and plant.t_s + eps < next_sample:
            yield Sample(plant.t_s, tuple(plant.xmeas), tuple(plant.xmv), plant.active_idvs, True)
            return
