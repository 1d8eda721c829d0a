"""The plant in a process of its own, publishing every snapshot through shared memory.

Why: with plant and endpoints in one process they share one interpreter lock and one event loop, and the clock
wins. At ``--speed 1000`` on a busy machine a Modbus client then managed a tenth of the sweeps it gets from an
idle simulator. In two processes the operating system shares the CPU between stepping and serving.

Endpoints get a :class:`RemoteSimulation`, which has the surface they use of :class:`~simulator.runtime.Simulation`
(``snapshot``, ``step_s``, ``add_listener``, ``set_idv``, ``clear_idvs``, ``reset``). The child process runs the
plant, its clock and schedule exactly as a :class:`~simulator.runtime.Simulation` does in-process, so values are
the same for a seed and schedule. Control calls go over a pipe and return once the change is visible in shared
memory. The child exits when told to or when the pipe closes (the parent died).

Shared memory layout (native byte order): a generation counter (odd while the child writes: a seqlock), then
seq, t_s, seed, IDV bit mask, shutdown flag and reason length, the reason (UTF-8), 53 values and 53 source
timestamps in microseconds since the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import struct
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from simulator.plant import IDV_NUMBERS, IdvEvent, check_idv, make_plant
from simulator.runtime import Listener, Simulation, Snapshot, run_clock
from simulator.tags import PROCESS_TAGS

_N = len(PROCESS_TAGS)
_GEN = struct.Struct("Q")
_HEADER = struct.Struct("QdqQ?H")
_REASON_MAX = 256
_VALUES = struct.Struct(f"{_N}d")
_STAMPS = struct.Struct(f"{_N}q")
_HEADER_AT = _GEN.size
_REASON_AT = _HEADER_AT + _HEADER.size
_VALUES_AT = _REASON_AT + _REASON_MAX
_STAMPS_AT = _VALUES_AT + _VALUES.size
SIZE = _STAMPS_AT + _STAMPS.size

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


class _Writer:
    """Child side: copies each snapshot into shared memory under the seqlock."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.gen = 0
        self._stamp_us: dict[int, int] = {}  # id(datetime) -> microseconds: most stamps repeat between snapshots

    def write(self, snap: Snapshot) -> None:
        buf, gen = self.buf, self.gen + 1
        _GEN.pack_into(buf, 0, gen)  # odd: readers keep their previous snapshot
        reason = (snap.shutdown_reason or "").encode()[:_REASON_MAX]
        mask = sum(1 << (n - 1) for n in snap.active_idvs)
        _HEADER.pack_into(buf, _HEADER_AT, snap.seq, snap.t_s, snap.seed, mask, snap.shutdown, len(reason))
        buf[_REASON_AT : _REASON_AT + len(reason)] = reason
        _VALUES.pack_into(buf, _VALUES_AT, *snap.values)
        known, stamps = self._stamp_us, []
        for stamp in snap.stamps:
            us = known.get(id(stamp))
            if us is None:
                us = (stamp - _EPOCH) // _US
            stamps.append(us)
        self._stamp_us = {id(s): us for s, us in zip(snap.stamps, stamps, strict=True)}
        _STAMPS.pack_into(buf, _STAMPS_AT, *stamps)
        self.gen = gen + 1
        _GEN.pack_into(buf, 0, self.gen)


class _Reader:
    """Parent side: the latest complete snapshot, rebuilt only when the generation moved."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.gen = -1
        self.snap: Snapshot | None = None
        self._stamps_us: tuple[int, ...] = ()

    def read(self, wait: bool = False) -> Snapshot | None:
        """The newest snapshot; while the child is mid-write, the previous one (or wait, with ``wait``)."""
        buf = self.buf
        while True:
            gen = _GEN.unpack_from(buf, 0)[0]
            if gen == self.gen:
                return self.snap
            if not gen & 1:
                seq, t_s, seed, mask, shutdown, n_reason = _HEADER.unpack_from(buf, _HEADER_AT)
                reason = bytes(buf[_REASON_AT : _REASON_AT + n_reason]).decode(errors="replace")
                values = _VALUES.unpack_from(buf, _VALUES_AT)
                stamps_us = _STAMPS.unpack_from(buf, _STAMPS_AT)
                if _GEN.unpack_from(buf, 0)[0] == gen:
                    break
            if not wait and self.snap is not None:
                return self.snap
            time.sleep(0)
        old_us, old = self._stamps_us, self.snap.stamps if self.snap is not None else ()
        stamps = tuple(old[i] if old_us and us == old_us[i] else _EPOCH + us * _US for i, us in enumerate(stamps_us))
        self.snap = Snapshot(seq, t_s, seed, values, stamps, frozenset(n for n in IDV_NUMBERS if mask >> (n - 1) & 1),
                             shutdown, reason if shutdown else None)
        self.gen, self._stamps_us = gen, stamps_us
        return self.snap


def _child_main(kind: str, seed: int, schedule: Sequence[IdvEvent], speed: float, warmup_s: float, shm_name: str,
                conn: Connection) -> None:
    """Entry point of the plant process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    shm = SharedMemory(shm_name)
    try:
        try:
            sim = Simulation(make_plant(kind), seed, schedule, warmup_s)
        except (RuntimeError, ValueError) as exc:
            conn.send(("error", str(exc)))
            return
        assert shm.buf is not None  # attached above
        writer = _Writer(shm.buf)
        writer.write(sim.snapshot)
        sim.add_listener(writer.write)
        conn.send(("ready", sim.step_s))
        asyncio.run(_child_loop(sim, speed, conn))
    finally:
        shm.close()


async def _child_loop(sim: Simulation, speed: float, conn: Connection) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_request() -> None:
        try:
            while conn.poll():
                request = conn.recv()
                if request[0] == "stop":
                    stop.set()
                    return
                conn.send(_handle(sim, request))
        except (EOFError, OSError):  # the parent is gone
            stop.set()

    loop.add_reader(conn.fileno(), on_request)
    try:
        await run_clock(sim, speed, stop, precise=True)
    finally:
        loop.remove_reader(conn.fileno())


def _handle(sim: Simulation, request: tuple[Any, ...]) -> tuple[str, Any]:
    command, *args = request
    try:
        if command == "set_idv":
            snap = sim.set_idv(int(args[0]), bool(args[1]))
        elif command == "clear":
            snap = sim.clear_idvs()
        elif command == "reset":
            snap = sim.reset(args[0])
        else:
            return "error", f"unknown command {command!r}"
    except ValueError as exc:
        return "error", str(exc)
    return "ok", snap.seq


class RemoteSimulation:
    """A :class:`~simulator.runtime.Simulation` running in a child process, seen through shared memory.

    Args:
        plant: ``"tep"`` or ``"synthetic"``.
        seed: noise seed.
        schedule: timed disturbance switches.
        speed: simulated seconds per wall second (0: as fast as possible); the child runs the clock.
        warmup_s: undisturbed simulated seconds run before time starts, after every reset (see
            :class:`~simulator.runtime.Simulation`); :meth:`start` returns after it.

    Call :meth:`start` before use and :meth:`close` after; :meth:`watch` calls listeners on changes.
    """

    def __init__(self, plant: str, seed: int, schedule: Sequence[IdvEvent], speed: float,
                 warmup_s: float = 0.0) -> None:
        self._args = (plant, seed, list(schedule), speed, warmup_s)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()  # one request in flight on the pipe (OPC DA calls come from threads)
        self._shm: SharedMemory | None = None
        self._reader: _Reader | None = None
        self._conn: Connection | None = None
        self._proc: Any = None
        self.step_s = 1.0

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the plant process; returns when its first snapshot is in shared memory.

        Raises:
            RuntimeError: the plant could not be built (e.g. tep-studio missing) or did not start in time.
        """
        self._shm = SharedMemory(create=True, size=SIZE)
        context = multiprocessing.get_context("spawn")  # no fork: the parent may already run threads
        parent, child = context.Pipe()
        self._proc = context.Process(target=_child_main, args=(*self._args, self._shm.name, child),
                                     name="tep-plant", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(timeout_s):
            self.close()
            raise RuntimeError(f"the plant process did not start within {timeout_s:g} s")
        try:
            status, detail = parent.recv()
        except EOFError:
            status, detail = "error", f"the plant process exited with code {self._proc.exitcode}"
        if status != "ready":
            self.close()
            raise RuntimeError(str(detail))
        self.step_s = float(detail)
        assert self._shm.buf is not None  # created above
        self._reader = _Reader(self._shm.buf)

    def close(self) -> None:
        """Stop the plant process and free the shared memory."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
            self._proc = None
        self._reader = None
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    @property
    def snapshot(self) -> Snapshot:
        if self._reader is None:
            raise RuntimeError("the plant process is not running: call start() first")
        snap = self._reader.read()
        assert snap is not None  # start() waited for the first snapshot
        return snap

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` on changes, from :meth:`watch`'s event loop. Keep it short."""
        self._listeners.append(listener)

    async def watch(self, stop: asyncio.Event, period_s: float = 0.005) -> None:
        """Poll shared memory every ``period_s`` and call the listeners when the snapshot changed."""
        seq = -1
        while not stop.is_set():
            snap = self.snapshot
            if snap.seq != seq:
                seq = snap.seq
                for listener in self._listeners:
                    listener(snap)
            await asyncio.sleep(period_s)

    def set_idv(self, n: int, on: bool) -> Snapshot:
        """Switch disturbance ``n``; raises ValueError naming the valid numbers for an unknown one."""
        return self._call("set_idv", check_idv(n), bool(on))

    def clear_idvs(self) -> Snapshot:
        return self._call("clear")

    def reset(self, seed: int | None = None) -> Snapshot:
        return self._call("reset", None if seed is None else int(seed))

    def _call(self, *request: Any) -> Snapshot:
        with self._lock:
            if self._conn is None or self._reader is None:
                raise RuntimeError("the plant process is not running")
            try:
                self._conn.send(request)
                status, detail = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"the plant process is gone ({exc}); restart the simulator") from exc
            if status != "ok":
                raise ValueError(detail)
            while True:  # the change is in shared memory before the reply: make it the snapshot we return
                snap = self._reader.read(wait=True)
                assert snap is not None
                if snap.seq >= detail:
                    return snap
