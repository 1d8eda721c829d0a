"""The plant in its own process: snapshots through shared memory, control over the pipe, same values as in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from devkit.peers import wait_for
from simulator.plant import IdvEvent, SyntheticPlant
from simulator.plantproc import SIZE, RemoteSimulation, _Reader, _Writer
from simulator.runtime import Simulation, Snapshot, run_clock


def test_shared_memory_round_trip_keeps_every_field() -> None:
    buf = memoryview(bytearray(SIZE))
    writer, reader = _Writer(buf), _Reader(buf)
    now = datetime.now(timezone.utc)
    values = tuple(float(i) + 0.125 for i in range(53))
    stamps = tuple(now - timedelta(microseconds=i * 7) for i in range(53))
    first = Snapshot(4, 12.0, 9, values, stamps, frozenset({1, 6, 28}), False, None)
    writer.write(first)
    assert reader.read() == first
    tripped = Snapshot(5, 13.0, 9, values, stamps, frozenset({6}), True, "Stripper liquid level too low")
    writer.write(tripped)
    assert reader.read() == tripped
    buf[0] = buf[0] + 1  # the writer is mid-write (odd generation): the reader keeps the complete snapshot
    assert reader.read() == tripped


@pytest.fixture()
def remote() -> Iterator[RemoteSimulation]:
    sim = RemoteSimulation("synthetic", 7, [IdvEvent(600, 2)], speed=0)
    sim.start()
    try:
        yield sim
    finally:
        sim.close()


def test_remote_plant_runs_and_matches_the_in_process_one(remote: RemoteSimulation) -> None:
    snap = wait_for(lambda: remote.snapshot if remote.snapshot.t_s >= 1200 else None, what="1200 s simulated")
    assert snap is not None
    local = Simulation(SyntheticPlant(), 7, [IdvEvent(600, 2)])
    local.advance(int(snap.t_s / local.step_s))
    assert local.snapshot.t_s == snap.t_s
    assert local.snapshot.values == snap.values  # same seed and schedule: same values, whatever the process
    assert snap.active_idvs == {2} and snap.seed == 7


def test_remote_control_is_visible_when_the_call_returns(remote: RemoteSimulation) -> None:
    seen: list[Snapshot] = []
    remote.add_listener(seen.append)
    assert 4 in remote.set_idv(4, True).active_idvs
    assert 4 in remote.snapshot.active_idvs
    with pytest.raises(ValueError, match="1-28"):
        remote.set_idv(29, True)
    assert remote.clear_idvs().active_idvs == frozenset()
    wait_for(lambda: remote.snapshot.t_s >= 3600, what="an hour simulated")
    after = remote.reset(11)
    assert after.seed == 11 and after.t_s < 3600  # back to the start (and running again)
    assert after.active_idvs == frozenset()  # IDV 2 comes back with the schedule at 600 s only
    assert seen == []  # listeners are called by watch(), in the endpoints' event loop


def test_a_plant_that_cannot_be_built_is_a_clear_error() -> None:
    sim = RemoteSimulation("nuclear", 1, [], speed=1)
    with pytest.raises(RuntimeError, match="unknown plant 'nuclear'"):
        sim.start()


def test_the_plant_process_clock_publishes_every_simulated_second() -> None:
    """At a high --speed each step is its own snapshot, so a fast client can read every simulated second."""
    sim = Simulation(SyntheticPlant(), 1)
    published: list[float] = []
    sim.add_listener(lambda snap: published.append(snap.t_s))

    async def run() -> None:
        stop = asyncio.Event()
        clock = asyncio.create_task(run_clock(sim, 2000, stop, precise=True))
        deadline = time.monotonic() + 30
        while sim.snapshot.t_s < 300:
            assert time.monotonic() < deadline, f"the clock stalled at t={sim.snapshot.t_s}"
            await asyncio.sleep(0.005)
        stop.set()
        await clock

    asyncio.run(run())
    assert published[:300] == [float(t) for t in range(1, 301)]


def test_the_plant_process_warms_up_before_time_starts() -> None:
    sim = RemoteSimulation("synthetic", 5, [], speed=1, warmup_s=3600)
    sim.start()
    try:
        after = sim.reset()  # the snapshot of the reset itself: warmed up again, time back at 0
    finally:
        sim.close()
    reference = Simulation(SyntheticPlant(), 5)
    reference.advance(3600)
    assert after.t_s == 0
    assert after.values == reference.snapshot.values
