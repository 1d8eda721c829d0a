"""The nucleus's component state machine, reproduced for the stand-ins (:class:`~devkit.ipc_server.IpcServer`
and ``gatewayctl dev run``), so that what our components report means there what it means on a core.

Source: aws-greengrass/aws-greengrass-nucleus, ``com.aws.greengrass.lifecyclemanager``:

- ``Lifecycle.reportState``: a reported state is judged against the *last reported* one by
  ``ALLOWED_STATE_TRANSITION_FOR_REPORTING`` (NEW -> ERRORED; STARTING -> RUNNING, ERRORED, FINISHED; RUNNING ->
  ERRORED, FINISHED; STOPPING -> ERRORED, FINISHED). Anything else is logged ("Invalid reported state") and
  ignored; ``LifecycleIPCEventStreamAgent.UpdateStateOperationHandler`` still answers the IPC call with success.
  So RUNNING reported from RUNNING (and every report after ERRORED until the restart) does nothing.
- ``Lifecycle.internalReportState``: ERRORED while NEW, STARTING or RUNNING (``STATES_TO_ERRORED``) adds a time to
  that state's error list, which is emptied first when its last error is ``errorResetTime`` old
  (``DEFAULT_ERROR_RESET_TIME_IN_SEC``, one hour: a chain of errors each within an hour of the previous one);
  any other state reported while in a state empties that state's list. At ``MAXIMUM_CONTINUAL_ERROR`` (3) errors
  the component goes BROKEN instead of ERRORED.
- ``Lifecycle.handleCurrentStateErrored``: from STARTING or RUNNING, STOPPING (the processes are stopped), then
  INSTALLED and STARTING again (a restart, at once, no backoff); from NEW, the install runs again.
  ``handleCurrentStateBroken``: the processes are stopped and nothing more happens until a deployment asks for a
  reinstall (desired state NEW), which also empties the error lists.
- ``GenericExternalService``: with ``Run`` the nucleus reports RUNNING itself once the process started
  (``handleRunScript``); the process exiting 0 stops the component (FINISHED), non-zero is ERRORED (RUN_ERROR).
  With ``Startup`` the component stays STARTING until it reports RUNNING or the script exits 0 (``startup``);
  a non-zero exit while STARTING or RUNNING is ERRORED (STARTUP_ERROR), an exit 0 while RUNNING changes nothing,
  and still STARTING after the Startup timeout (120 s by default) is ERRORED (STARTUP_TIMEOUT,
  ``Lifecycle.handleStateTransitionStartingToRunningAsync``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from devkit import devrun_recipe as rcp

log = logging.getLogger(__name__)

Kind = Literal["Run", "Startup"]
#: Lifecycle.ALLOWED_STATE_TRANSITION_FOR_REPORTING, keyed by the last reported state.
ALLOWED_REPORTS: dict[str, frozenset[str]] = {
    "NEW": frozenset({"ERRORED"}),
    "STARTING": frozenset({"RUNNING", "ERRORED", "FINISHED"}),
    "RUNNING": frozenset({"ERRORED", "FINISHED"}),
    "STOPPING": frozenset({"ERRORED", "FINISHED"}),
}
STATES_TO_ERRORED = frozenset({"NEW", "STARTING", "RUNNING"})
MAXIMUM_CONTINUAL_ERROR = 3
DEFAULT_ERROR_RESET_TIME_S = 3600.0


class ComponentLifecycle:
    """One component's state as the nucleus keeps it. Reports come from UpdateState (:meth:`report`); the
    supervisor (the dev run) drives the rest: :meth:`starting`, :meth:`exited`, :meth:`stopping`, :meth:`stopped`.

    Args:
        name: the component.
        state: where it starts: NEW under a supervisor; STARTING for a component some other process started
            (an :class:`~devkit.ipc_server.IpcServer` without a dev run).
        kind: the lifecycle step its process runs under (``Startup`` or ``Run``).
        error_reset_s: the recipe's ``Lifecycle.errorResetTime`` (seconds).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, name: str, *, state: str = "NEW", kind: Kind = "Startup",
                 error_reset_s: float = DEFAULT_ERROR_RESET_TIME_S, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.name, self.kind, self.error_reset_s, self.clock = name, kind, error_reset_s, clock
        self.state = state
        self.reason = ""
        self.history: list[str] = [state]
        self.generation = 0  # Lifecycle.stateGeneration: which start an exit or a timeout belongs to
        self.restarts = 0
        self._last_reported: str | None = None
        self._errors: dict[str, list[float]] = {}
        self.changed = asyncio.Event()

    # ---- reports: Lifecycle.reportState / internalReportState ------------------------------------------------

    def report(self, new: str, reason: str = "") -> bool:
        """A state the component (UpdateState) or its process (exit, timeout) reports. False when ignored."""
        last = self._last_reported or self.state
        if new not in ALLOWED_REPORTS.get(last, frozenset()):
            log.warning("%s: invalid reported state %s (last reported %s): ignored, as the nucleus does",
                        self.name, new, last)
            return False
        self._internal(new, reason)
        return True

    def _internal(self, new: str, reason: str = "") -> None:
        self._last_reported = new
        current = self.state
        if new == "ERRORED" and current in STATES_TO_ERRORED:
            times = self._errors.setdefault(current, [])
            now = self.clock()
            if times and now - times[-1] >= self.error_reset_s:
                times.clear()
            times.append(now)
        else:  # a non-ERRORED state resets the count of the current state (transient issues must not break it)
            self._errors.pop(current, None)
        broken = len(self._errors.get(current, [])) >= MAXIMUM_CONTINUAL_ERROR
        self._set("BROKEN" if broken else new, reason)

    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            log.info("%s: %s -> %s%s", self.name, self.state, state, f" ({reason})" if reason else "")
            self.history.append(state)
        self.state, self.reason = state, reason
        self.changed.set()

    # ---- what the supervisor drives ---------------------------------------------------------------------------

    def installed(self) -> None:
        """The Install step succeeded (or there is none)."""
        self._internal("INSTALLED")

    def reinstall(self) -> None:
        """After an ERRORED install, NEW again: the install runs again (Lifecycle.handleCurrentStateErrored)."""
        self._internal("NEW")

    def starting(self) -> int:
        """The start step is launched: STARTING, a new generation; with ``Run``, RUNNING at once."""
        self.generation += 1
        self._internal("STARTING")
        if self.kind == "Run":
            self.report("RUNNING")
        return self.generation

    def exited(self, code: int | None, generation: int) -> None:
        """The process of ``generation`` ended with ``code`` (None: killed by a timeout): the exit callbacks of
        GenericExternalService.handleRunScript (Run) and startup (Startup)."""
        if generation != self.generation:
            return
        if self.kind == "Run":
            if self._last_reported == "RUNNING" or self.state == "RUNNING":
                if code == 0:
                    self._internal("FINISHED", "Run exited 0")
                else:
                    self.report("ERRORED", f"RUN_ERROR: exit {code}")
            return
        if self.state not in ("STARTING", "RUNNING"):
            return
        if code == 0 and self.state == "STARTING":
            self.report("RUNNING", "Startup exited 0")
        elif code != 0:
            self.report("ERRORED", f"STARTUP_ERROR: exit {code}")

    def startup_timed_out(self, generation: int) -> None:
        """The Startup timeout passed: still STARTING in the same generation is ERRORED (STARTUP_TIMEOUT)."""
        if generation == self.generation and self.state == "STARTING":
            self.report("ERRORED", "STARTUP_TIMEOUT")

    def stopping(self) -> None:
        """The processes are being stopped (after ERRORED or BROKEN, or the component is stopped)."""
        if self.state != "BROKEN":
            self._internal("STOPPING")

    def stopped(self, restart: bool) -> None:
        """The processes are gone: INSTALLED for a restart (Lifecycle.serviceTerminatedMoveToDesiredState), else
        FINISHED; BROKEN stays BROKEN."""
        if self.state == "BROKEN":
            return
        if restart:
            self.restarts += 1
        self._internal("INSTALLED" if restart else "FINISHED")

    def redeployed(self) -> None:
        """A deployment reinstalls the component (Lifecycle.handleCurrentStateBroken, desired state NEW): back to
        NEW with every error count emptied."""
        self._errors.clear()
        self._last_reported = None
        self._set("NEW", "deployment")


@dataclass
class Running:
    """A supervised component: its state as the nucleus would show it, its process and restarts."""

    component: rcp.Component
    token: str
    lifecycle: ComponentLifecycle
    pid: int | None = None
    last_exit: int | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def state(self) -> str:
        return self.lifecycle.state

    @property
    def restarts(self) -> int:
        return self.lifecycle.restarts
