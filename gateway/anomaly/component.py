"""factoryedge.AnomalyDetector: the asyncio wiring of :class:`gateway.anomaly.engine.Engine`.

The engine (reading, scoring, writing, saving) runs in one worker thread; the event loop runs the alarm events
(:mod:`gateway.anomaly.events`), configuration updates and the status file. Restart and replay semantics are in
:mod:`gateway.anomaly.engine`.

Configuration updates (``ctx.updates``: a Greengrass deployment or SIGHUP) apply without a restart: a change of
groups, intervals, prefix or alarm topics keeps the model of every group whose fingerprint did not change (others
learn again); a change of ``store``, ``model_dir``, ``input_streams``, ``output_stream`` or ``start_from`` saves the
model and reopens the engine in-process. With no group configured the component waits for a deployment that adds
one (WARNING once, and the status says so).

Its loops (the engine, the alarm events, the status file) are supervised (:mod:`gateway.supervise`): a failure,
such as a corrupt position file or a bug, is logged once, shown in the status (``tasks``, ``last_error``) and the
loop restarts with backoff; a failed engine is reopened from its model file, as after a crash.

Status file ``<store.path>/status/factoryedge.AnomalyDetector.json``, rewritten every ``status_interval_s``::

    {
      "component": "factoryedge.AnomalyDetector", "pid": 123, "started_ns": ..., "updated_ns": ...,
      "config_revision": "3f2a9c01b7de", "config_state": "RUNNING", ...   # gateway.status.status_fields()
      "tasks": {"engine": {"restarts": 0, "last_error": "", "last_error_ns": 0}, "events": {..}, "status": {..}},
      "last_error": "",                              # the newest current failure of a task ("" when none)
      "problem": null | "no groups configured",
      "model_dir": "anomaly-model", "restore": "fresh" | "restored" | "relearning", "last_save_ns": ... | null,
      "clock_ns": ... | null,                       # detector clock (newest source time read)
      "inputs": {"factoryedge-opcua": {"state": "reading" | "waiting" | "error", "position": 812, "committed": 790,
                  "backlog_messages": 3, "records_read": 81200, "messages_lost": 0, "corrupt_messages_read": 0}, ...},
      "output_stream": "factoryedge-anomaly", "pending_outputs": 0,
      "counters": {"records_read": .., "records_written": .., "records_suppressed": .., "future_records_dropped": ..,
                   "model_saves": .., "model_save_errors": ..},      # names: docs/counters.md
      "errors": {"<stream>" | "output" | "save": "last error text"},
      "groups": {"reactor": {
          "state": "learning" | "scoring", "learning_progress": "412/1000", "learning_share": 0.412,
          "score": 0.42 | null, "last_scored_ns": ... | null,   # score relative to the threshold: 1.0 = alarm line
          "threshold": 7.93,                                    # calibrated forest-score threshold (0 while learning)
          "alarm": false, "backend": "krcf",
          "counters": {"vectors_scored": .., "anomalous_vectors_scored": .., "model_updates": ..},
          "invalid": {"missing:XMEAS99": 10, "stale:XMV10": 2, "bad:XMEAS7": 1},
          "missing_tags": ["XMEAS99"]}},
      "events": {"enabled": true, "iot_core_topic": "...", "local_topic": "...", "queued": 0, "events_sent": 4,
                 "event_send_errors": 0, "events_dropped": 0, "last_error": ""}
    }
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import Any

from gateway.aio import Offload, wait
from gateway.anomaly.config import AnomalyDetectorConfig
from gateway.anomaly.engine import COMPONENT, Engine
from gateway.anomaly.events import AlarmPublisher
from gateway.record import metric_records, now_ns, start_seq
from gateway.runtime import Context
from gateway.status import StatusFile
from gateway.streams import PositionStore, StreamStore, open_store
from gateway.supervise import Supervisor, describe

log = logging.getLogger(__name__)

IDLE_S = 0.25  # pause when no input stream had anything new
_REOPEN_FIELDS = ("store", "model_dir", "input_streams", "output_stream", "start_from")


class AnomalyComponent:
    """Runs the engine until stopped; applies configuration updates; writes the status file."""

    def __init__(self, cfg: AnomalyDetectorConfig, *, name: str = COMPONENT) -> None:
        self.cfg = cfg
        self.name = name
        self.engine: Engine | None = None
        self.store: StreamStore | None = None
        self.positions: PositionStore | None = None
        self.events = AlarmPublisher(cfg.alarms)
        self._offload = Offload("anomaly")
        # its folder follows store.path, which a deployment may change
        self.status_file = StatusFile(name, None, cfg.status_interval_s)
        self.supervisor = Supervisor(name, asyncio.Event())

    async def serve(self, ctx: Context[AnomalyDetectorConfig]) -> None:
        """Run until ``ctx.stop``; take every accepted new configuration from ``ctx.updates``."""
        sup = self.supervisor
        sup.stop = ctx.stop
        tasks = [sup.spawn("engine", partial(self._run_engine, ctx)), sup.spawn("events", partial(self.events.run,
                 ctx.stop)), sup.spawn("status", partial(self._status_loop, ctx.stop)),
                 sup.spawn("metrics", partial(self._metrics_loop, ctx.stop))]
        try:
            await asyncio.gather(*tasks)
        finally:
            try:
                await self._stop_engine()
            except Exception as exc:  # noqa: BLE001 - the engine saves what it can; the status must still be written
                log.error("%s: closing the engine failed: %s", self.name, describe(exc))
            await self._write_status()
            self.events.close()
            if self.store is not None:
                await self._offload(self.store.close)
            self._offload.close()

    async def _run_engine(self, ctx: Context[AnomalyDetectorConfig]) -> None:
        try:
            if self.engine is None:
                await self._start()
            while not ctx.stop.is_set():
                while not ctx.updates.empty():
                    await self.apply(ctx.updates.get_nowait())
                if not await self._step():
                    await wait(ctx.stop, IDLE_S)
        except Exception:
            # Reopened from its model file by the restart, exactly as after a crash (see gateway.anomaly.engine):
            # what was read since the last save is read and scored again, what was written is not written twice.
            self.engine = None
            raise

    async def _status_loop(self, stop: asyncio.Event) -> None:
        # A loop of its own: the status must go on telling what failed while the engine waits for its restart.
        while not stop.is_set():
            await self._write_status()
            await wait(stop, self.cfg.status_interval_s)

    async def _metrics_loop(self, stop: asyncio.Event) -> None:
        # Its counters as METRIC records in its output stream, as the collectors and the publisher do: a fleet sees
        # in the cloud what it read, wrote, dropped (future timestamps) and lost (input gaps, corrupt messages).
        seq = start_seq()
        while not stop.is_set():
            await wait(stop, self.cfg.metrics_interval_s)
            engine = self.engine
            if engine is None or stop.is_set():
                continue
            counters = engine.metric_values()
            records = metric_records(self.name, ((f"detector/{k}", v) for k, v in sorted(counters.items())), now_ns(),
                                     seq)
            seq += len(records)
            await self._offload(engine.queue, records)

    async def _step(self) -> bool:
        if self.engine is None:
            return False
        out = await self._offload(self.engine.step)
        if out.events:
            self.events.push([e.as_json(self.name) for e in out.events])
            for e in out.events:
                log.info("anomaly group %r alarm %s (score %.2f of threshold, top %s)", e.group,
                         "RAISED" if e.raised else "cleared", e.score, e.top_tags)
        await self._offload(self.engine.maybe_save)
        return out.messages > 0

    async def apply(self, new: AnomalyDetectorConfig) -> None:
        """Apply a new configuration without a restart (see the module docstring)."""
        old, self.cfg = self.cfg, new
        self.events.cfg = new.alarms
        reopen = any(getattr(old, f) != getattr(new, f) for f in _REOPEN_FIELDS)
        if self.engine is not None and not reopen and new.groups:
            outcome = await self._offload(self.engine.reconfigure, new)
            log.info("%s: configuration applied; groups %s", self.name, outcome)
            return
        await self._stop_engine()
        if old.store != new.store and self.store is not None:
            await self._offload(self.store.close)
            self.store = None
        await self._start()
        log.info("%s: configuration applied (engine reopened)", self.name)

    async def _start(self) -> None:
        logging.getLogger("gateway").setLevel(self.cfg.log_level)
        if self.cfg.detector_config() is None:
            log.warning("%s: no groups configured: nothing is scored until a deployment adds groups", self.name)
            return
        if self.store is None:
            self.store, self.positions = await self._offload(open_store, self.cfg.store)
        assert self.store is not None and self.positions is not None
        engine = Engine(self.cfg, self.store, self.positions, name=self.name)
        await self._offload(engine.open)
        self.engine = engine

    async def _stop_engine(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await self._offload(engine.close)

    def status_path(self) -> Path:
        """Where the status file is written."""
        return Path(self.cfg.store.path) / "status" / f"{self.name}.json"

    async def _write_status(self) -> None:
        engine_status: dict[str, Any] = (
            await self._offload(self.engine.status) if self.engine is not None else {"groups": {}}
        )
        status = {
            **self.status_file.header(),
            **self.supervisor.status(),
            "problem": None if self.cfg.groups else "no groups configured",
            **engine_status,
            "events": self.events.status(),
        }
        self.status_file.folder = self.status_path().parent
        self.status_file.write(status)


async def run(ctx: Context[AnomalyDetectorConfig]) -> None:
    """The component's ``run`` for :func:`gateway.runtime.component_main`."""
    await AnomalyComponent(ctx.config, name=ctx.name).serve(ctx)
