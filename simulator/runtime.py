"""The running simulation: one plant, its clock, its disturbance schedule and the snapshot endpoints serve.

Threading contract: every method of :class:`Simulation` may be called from any thread (the OPC DA daemon runs in
its own threads); a lock serialises access to the plant. Endpoints read :attr:`Simulation.snapshot`, an
immutable object replaced after every change, and may register a listener to hear about changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from simulator.plant import IdvEvent, Plant, apply_due, check_idv
from simulator.tags import PROCESS_TAGS


@dataclass(frozen=True)
class Snapshot:
    """The plant as endpoints publish it.

    Attributes:
        seq: increases with every change (step, disturbance switch, reset).
        t_s: simulated seconds since the last reset.
        seed: noise seed of the current run.
        values: process values in :data:`simulator.tags.PROCESS_TAGS` order (XMEAS 1-41, XMV 1-12).
        stamps: source timestamp per value: the wall-clock time the value (or its status, at a trip or the reset
            after one) last changed, so an analyzer's timestamp is the time its last analysis arrived.
        active_idvs: disturbances switched on.
        shutdown: the plant tripped; values are frozen and BAD until a reset.
        shutdown_reason: why it tripped.
    """

    seq: int
    t_s: float
    seed: int
    values: tuple[float, ...]
    stamps: tuple[datetime, ...]
    active_idvs: frozenset[int]
    shutdown: bool
    shutdown_reason: str | None

    @property
    def idv_text(self) -> str:
        return ",".join(str(n) for n in sorted(self.active_idvs))


Listener = Callable[[Snapshot], None]


class SimulationView(Protocol):
    """What endpoints use of a simulation: :class:`Simulation` here, or one in its own process
    (:class:`simulator.plantproc.RemoteSimulation`)."""

    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def step_s(self) -> float: ...

    def add_listener(self, listener: Listener) -> None: ...
    def set_idv(self, n: int, on: bool) -> Snapshot: ...
    def clear_idvs(self) -> Snapshot: ...
    def reset(self, seed: int | None = None) -> Snapshot: ...

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(h|m|s)?$")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse ``8h``, ``30m``, ``90s`` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"bad duration {text!r}: use e.g. 8h, 30m, 90s or seconds")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_idv_schedule(specs: Sequence[str]) -> list[IdvEvent]:
    """Parse ``--idv`` arguments: ``6`` (on from the start), ``6@8h`` (on at 8 h), ``6@8h-10h`` (on 8 h to 10 h).

    Raises:
        ValueError: for a malformed spec or an unknown disturbance number.
    """
    events: list[IdvEvent] = []
    for spec in specs:
        number, _, when = spec.partition("@")
        try:
            n = check_idv(int(number))
        except ValueError as exc:
            raise ValueError(f"bad --idv {spec!r}: {exc}") from None
        start, _, stop = (when or "0").partition("-")
        events.append(IdvEvent(parse_duration(start), n, True))
        if stop:
            events.append(IdvEvent(parse_duration(stop), n, False))
    return sorted(events, key=lambda e: e.at_s)


class Simulation:
    """A plant, its seed and schedule, advanced on demand; thread-safe.

    Args:
        plant: the model to run.
        seed: noise seed; ``reset()`` without a seed reuses it.
        schedule: timed disturbance switches, replayed from the start after every reset.
        warmup_s: simulated seconds the plant runs undisturbed after every reset before time starts: the revised
            TEP swings for about 10 h after a reset (start-up, not normal operation), so a run meant to look like
            a plant in steady operation starts after it. The served time (``Snapshot.t_s``) and the schedule count
            from the end of the warm-up.
    """

    def __init__(self, plant: Plant, seed: int = 1, schedule: Sequence[IdvEvent] = (), warmup_s: float = 0.0) -> None:
        if warmup_s < 0:
            raise ValueError(f"warm-up {warmup_s:g} s must be >= 0")
        self.plant = plant
        self.schedule = sorted(schedule, key=lambda e: e.at_s)
        self.warmup_s = float(warmup_s)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._seed = seed
        self._seq = 0
        self._t0 = 0.0
        self._due: list[IdvEvent] = []
        self._next_event = 0
        self._restart_locked()
        now = datetime.now(timezone.utc)
        self._snapshot = self._build(now, None)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def step_s(self) -> float:
        return self.plant.step_s

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` after every change, from the thread that made it. Keep it short."""
        self._listeners.append(listener)

    def advance(self, steps: int = 1) -> Snapshot:
        """Step the plant ``steps`` times, applying scheduled switches as their time comes."""
        with self._lock:
            plant = self.plant
            for _ in range(steps):
                if plant.shutdown:
                    break
                plant.step()
                self._next_event = apply_due(plant, self._due, self._next_event)
            snap = self._publish_locked()
        self._notify(snap)
        return snap

    def set_idv(self, n: int, on: bool) -> Snapshot:
        """Switch disturbance ``n``; raises ValueError naming the valid numbers for an unknown one."""
        with self._lock:
            self.plant.set_idv(n, on)
            snap = self._publish_locked()
        self._notify(snap)
        return snap

    def clear_idvs(self) -> Snapshot:
        with self._lock:
            for n in self.plant.active_idvs:
                self.plant.set_idv(n, False)
            snap = self._publish_locked()
        self._notify(snap)
        return snap

    def reset(self, seed: int | None = None) -> Snapshot:
        """Restart from the base case (clears a trip and all disturbances, replays the schedule)."""
        with self._lock:
            if seed is not None:
                self._seed = int(seed)
            self._restart_locked()
            snap = self._publish_locked()
        self._notify(snap)
        return snap

    def _restart_locked(self) -> None:
        """Reset the plant, run the warm-up, and line the schedule up with the time after it."""
        plant = self.plant
        plant.reset(self._seed)
        eps = plant.step_s * 1e-6
        while plant.t_s + eps < self.warmup_s and not plant.shutdown:
            plant.step()
        self._t0 = plant.t_s
        self._due = [IdvEvent(e.at_s + self._t0, e.idv, e.on) for e in self.schedule]
        self._next_event = apply_due(plant, self._due, 0)

    def _publish_locked(self) -> Snapshot:
        self._snapshot = self._build(datetime.now(timezone.utc), self._snapshot)
        return self._snapshot

    def _notify(self, snap: Snapshot) -> None:
        for listener in self._listeners:
            listener(snap)

    def _build(self, now: datetime, previous: Snapshot | None) -> Snapshot:
        plant = self.plant
        values = (*plant.xmeas, *plant.xmv)
        if len(values) != len(PROCESS_TAGS):
            raise RuntimeError(f"plant returned {len(values)} values, expected {len(PROCESS_TAGS)}")
        if previous is None or previous.shutdown != plant.shutdown:
            # a trip (or the reset after one) changes every value's status now: that is its source time
            stamps = (now,) * len(values)
        else:
            old_values, old_stamps = previous.values, previous.stamps
            stamps = tuple(old_stamps[i] if v == old_values[i] else now for i, v in enumerate(values))
        self._seq += 1
        return Snapshot(
            seq=self._seq,
            t_s=plant.t_s - self._t0,
            seed=self._seed,
            values=values,
            stamps=stamps,
            active_idvs=plant.active_idvs,
            shutdown=plant.shutdown,
            shutdown_reason=plant.shutdown_reason,
        )


async def run_clock(
    sim: Simulation, speed: float, stop: asyncio.Event, batch_s: float = 0.01, precise: bool = False
) -> None:
    """Advance ``sim`` in fixed steps at ``speed`` simulated seconds per wall second until ``stop`` is set.

    ``speed == 0`` runs as fast as possible, in batches of about ``batch_s`` of CPU so endpoints sharing the
    event loop keep answering. Values depend only on the seed and schedule, never on the pace.

    ``precise`` (for a loop that serves nothing else, the plant process) publishes every step and waits for
    the next one with a blocking sleep when it is under 2 ms away: event loop timers round up to a millisecond,
    so at ``--speed 1000`` steps would otherwise come in pairs and every other simulated second would never be
    visible to a client.
    """
    if speed < 0:
        raise ValueError(f"speed {speed} must be >= 0 (0 = as fast as possible)")
    step_s = sim.step_s
    started = time.monotonic()
    done = 0
    while not stop.is_set():
        if sim.snapshot.shutdown:  # a tripped plant does not move: idle until a reset
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
            started, done = time.monotonic(), 0
            continue
        batch_end = time.monotonic() + batch_s
        if speed == 0:
            while time.monotonic() < batch_end:
                sim.advance(32)
            await asyncio.sleep(0)
            continue
        due = int((time.monotonic() - started) * speed / step_s) - done
        while due > 0 and time.monotonic() < batch_end:
            chunk = 1 if precise else min(due, 32)
            sim.advance(chunk)
            done += chunk
            due -= chunk
        if due > 0:  # behind: yield to endpoints, then carry on
            await asyncio.sleep(0)
            continue
        delay = max(0.0, started + (done + 1) * step_s / speed - time.monotonic())
        if precise and delay < 0.002:
            time.sleep(delay)
            await asyncio.sleep(0)  # control requests are answered between steps
            continue
        if delay < 0.05:  # fast speeds wake every few ms: a plain sleep costs a fraction of wait_for's task
            await asyncio.sleep(delay)
            continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
