"""The anomaly component's core, synchronous: input streams -> :class:`Detector` -> output stream.

One owner calls it from one thread (the component runs it in a worker thread): :meth:`Engine.open` once,
:meth:`Engine.step` in a loop, :meth:`Engine.maybe_save` after each step, :meth:`Engine.close` on shutdown.

**Clock.** The detector is polled in *source time*: records of all input streams read in one step are merged in
timestamp order, and when a record newer than every record before it arrives, the detector is first polled just
before that record's time, so a tick is assembled from everything stamped up to it (the way the offline replay
polls after each CSV row; a test checks both give the same scores). A backlog read after a restart or an outage is
therefore scored tick by tick, not skipped. When no newer record arrives, the clock moves on with the wall clock,
``late_s`` behind, so members that stopped are counted stale and a group whose every source stopped is not silent.
Source clocks far ahead of the gateway (more than ``MAX_FUTURE_S``) are counted and their records dropped.

**Restart semantics** (model, input positions and outputs always agree):

- The model file holds, with the model, the input positions its state has consumed, the detector clock and the
  output stream's sequence number at that moment (``Detector.context``). It is saved every ``save_interval_s``,
  when a group finishes learning, on a configuration change and on shutdown, and only when every output record of
  the consumed input is in the output stream. Reader positions are committed to the position store right *after*
  the save (they serve ``gatewayctl buffer``); on start the positions in the model file win.
- After a clean stop nothing is read twice. After a crash the input since the last save is read again and scored
  again from the saved state (never from learning); the output records and alarm events of ticks already written
  to the output stream before the crash are suppressed (their high-water mark per group is read back from the
  output stream), so no alarm is raised twice. An alarm event published over IPC after its record was written and
  before a crash is not sent again; one whose record was written but not yet published when the process died is
  lost (the record is in the stream).
- Without a usable model file (first start, corrupt file, file of another format version: set aside, ERROR
  logged) every group learns; reading starts from the position store, else ``start_from``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.anomaly.config import AnomalyDetectorConfig
from gateway.anomaly.detector import Detector
from gateway.anomaly.model import StepResult
from gateway.anomaly.persist import ModelVersionError
from gateway.codec import decode_batch
from gateway.errors import CodecError, StreamError, StreamNotFound
from gateway.record import Kind, Record, now_ns
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamStore

log = logging.getLogger(__name__)

COMPONENT = "factoryedge.AnomalyDetector"
NS = 1_000_000_000
MAX_FUTURE_S = 300.0
MAX_MESSAGES = 200  # per input stream and step
REOPEN_S = 5.0  # how often a missing input stream is looked for
# The engine's counters (status ``counters``, METRIC ``detector/<name>``) and each input reader's (status ``inputs``);
# names per gateway/counters.py.
COUNTERS = ("records_read", "records_written", "records_suppressed", "future_records_dropped", "model_saves",
            "model_save_errors")
INPUT_COUNTERS = ("records_read", "messages_lost", "corrupt_messages_read")


@dataclass
class AlarmEvent:
    """An alarm raise or clear, as published over IPC (JSON, see :meth:`as_json`)."""

    group: str
    raised: bool
    score: float
    forest_threshold: float
    top_tags: tuple[tuple[str, float], ...]
    ts_ns: int

    def as_json(self, component: str = COMPONENT) -> dict[str, Any]:
        """``score`` is relative to the group's calibrated threshold (1.0 = the alarm line)."""
        return {
            "component": component,
            "group": self.group,
            "event": "raised" if self.raised else "cleared",
            "alarm": self.raised,
            "score": round(self.score, 6),
            "threshold": 1.0,
            "forest_score": round(self.score * self.forest_threshold, 6),
            "forest_threshold": self.forest_threshold,
            "top_tags": [{"tag": t, "share": s} for t, s in self.top_tags],
            "time": datetime.fromtimestamp(self.ts_ns / NS, timezone.utc).isoformat(timespec="milliseconds"),
            "ts_ns": self.ts_ns,
        }


@dataclass
class StepOutput:
    """What one :meth:`Engine.step` did."""

    messages: int = 0
    written: int = 0
    events: list[AlarmEvent] = field(default_factory=list)


class Engine:
    """Reads the inputs, feeds the detector, writes its records; keeps model, positions and outputs consistent."""

    def __init__(
        self,
        cfg: AnomalyDetectorConfig,
        store: StreamStore,
        positions: PositionStore,
        *,
        name: str = COMPONENT,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        detector_cfg = cfg.detector_config()
        if detector_cfg is None:
            raise ValueError("Engine needs at least one group")
        self.cfg = cfg
        self.store = store
        self.positions = positions
        self.name = name
        self._mono = mono_ns
        self.det = Detector(detector_cfg, Path(cfg.model_dir), source=name)
        self.writer = RecordWriter(store, cfg.output_stream.name)
        self.readers: dict[str, RecordReader | None] = {s: None for s in cfg.input_streams}
        self.restore = ""
        self._saved_positions: dict[str, int] = {}
        self._clock: int | None = None  # newest source time read
        self._clock_mono = 0
        self._polled: int | None = None  # last time the detector was polled at
        self._out_next_seq = 0
        self._hwm: dict[str, int] = {}  # group -> newest tick already in the output stream (replay after a crash)
        self._pending: list[Record] = []
        self._next_reopen = 0
        self._waiting_logged: set[str] = set()
        self._errors: dict[str, str] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_save_ns: int | None = None

    # ---- start and stop -------------------------------------------------------------------------------------

    def open(self) -> str:
        """Restore the model (with the fallbacks in the module docstring), create the output stream, open inputs."""
        try:
            self.restore = self.det.restore()
        except ModelVersionError as exc:
            log.error("%s", exc)
            self.det.set_aside("version")
            self.restore = "relearning"
        self.store.create_stream(self.cfg.output_stream)
        ctx = self.det.context
        self._saved_positions = {str(k): int(v) for k, v in (ctx.get("positions") or {}).items()}
        clock = ctx.get("clock") or {}
        self._clock, self._polled = clock.get("source_ns"), clock.get("polled_ns")
        self._clock_mono = self._mono()
        self._out_next_seq = self.store.describe(self.cfg.output_stream.name).next_seq
        output = ctx.get("output") or {}
        if output.get("stream") == self.cfg.output_stream.name:
            self._hwm = self._written_since(int(output["next_seq"]))
            if self._hwm:
                log.warning("%s: restarted after a crash; ticks already written are not written again: %s",
                            self.name, {g: ts for g, ts in self._hwm.items()})
        self._open_inputs()
        log.info("%s: model %s (%s), groups %s", self.name, self.restore, self.cfg.model_dir,
                 {n: m.state for n, m in self.det.models.items()})
        return self.restore

    def close(self) -> None:
        """Write what is pending, save the model and commit positions."""
        self._flush()
        self.save()

    def _written_since(self, seq: int) -> dict[str, int]:
        """Per group, the newest score/alarm tick this component wrote to the output stream from ``seq`` on."""
        hwm: dict[str, int] = {}
        stream = self.cfg.output_stream.name
        while True:
            messages = self.store.read(stream, seq, min_count=1, max_count=500, timeout_s=0)
            if not messages:
                return hwm
            for msg in messages:
                seq = msg.seq + 1
                try:
                    records = decode_batch(msg.payload)
                except CodecError:
                    continue
                for r in records:
                    if r.source == self.name and r.kind in (Kind.SCORE, Kind.ALARM):
                        group = r.tag.rsplit("/", 2)[-2]
                        hwm[group] = max(hwm.get(group, r.source_ts_ns), r.source_ts_ns)

    def _open_inputs(self) -> None:
        for stream, reader in self.readers.items():
            if reader is not None:
                continue
            try:
                info = self.store.describe(stream)
            except StreamNotFound:
                if stream not in self._waiting_logged:
                    log.info("%s: waiting for input stream %s to be created", self.name, stream)
                    self._waiting_logged.add(stream)
                continue
            reader = RecordReader(self.store, stream, self.name, self.positions, start=self.cfg.start_from)
            if stream in self._saved_positions:
                reader.position = self._saved_positions[stream]
            if reader.position > info.next_seq:  # the stream was deleted and created again
                log.warning("%s: input stream %s restarted at seq %d (position was %d): reading it from its start",
                            self.name, stream, info.oldest_seq, reader.position)
                reader.position = info.oldest_seq
            self.readers[stream] = reader
            log.info("%s: reading %s from seq %d", self.name, stream, reader.position)

    # ---- the loop -------------------------------------------------------------------------------------------

    def step(self) -> StepOutput:
        """Read what the inputs have, score it, write the output records; the alarm events to publish."""
        out = StepOutput()
        if not self._flush():  # the output stream refuses data: read nothing more until it takes it
            return out
        mono = self._mono()
        if mono >= self._next_reopen and None in self.readers.values():
            self._next_reopen = mono + int(REOPEN_S * NS)
            self._open_inputs()
        records: list[Record] = []
        for stream, reader in self.readers.items():
            if reader is None:
                continue
            try:
                batch = reader.poll(max_messages=MAX_MESSAGES, timeout_s=0)
            except StreamError as exc:
                if self._errors.get(stream) != str(exc):
                    log.warning("%s: reading %s failed (retrying): %s", self.name, stream, exc)
                self._errors[stream] = str(exc)
                continue
            self._errors.pop(stream, None)
            out.messages += batch.messages
            records.extend(batch.records)
        self.counters["records_read"] += len(records)
        results = self._process(sorted(records, key=lambda r: r.source_ts_ns), mono)
        if self._clock is not None:  # nothing newer for a while: the clock moves on with the wall clock
            results += self._poll(self._clock + (mono - self._clock_mono) - int(self.cfg.late_s * NS))
        results = self._not_yet_written(results)
        self._pending += self.det.records(results, now_ns())
        out.events = [
            AlarmEvent(g, r.alarm, r.score, self.det.models[g].threshold, r.top_tags, r.ts_ns)
            for g, r in results
            if r.changed and g in self.det.models
        ]
        before = self.counters["records_written"]
        self._flush()
        out.written = self.counters["records_written"] - before
        return out

    def _process(self, records: list[Record], mono: int) -> list[tuple[str, StepResult]]:
        results: list[tuple[str, StepResult]] = []
        horizon = now_ns() + int(MAX_FUTURE_S * NS)
        for r in records:
            ts = r.source_ts_ns
            if ts > horizon:
                self.counters["future_records_dropped"] += 1
                if self.counters["future_records_dropped"] == 1:
                    log.error("%s: %s/%s is stamped %.0f s in the future: dropped (counted). Fix: set the "
                              "device's clock", self.name, r.source, r.tag, (ts - now_ns()) / NS)
                continue
            if self._clock is None or ts > self._clock:
                if self._clock is not None:
                    results += self._poll(ts - 1)
                self._clock, self._clock_mono = ts, mono
            self.det.offer(r)
        return results

    def _poll(self, t: int) -> list[tuple[str, StepResult]]:
        if self._polled is not None and t <= self._polled:
            return []
        self._polled = t
        return self.det.poll_results(t)

    def _not_yet_written(self, results: list[tuple[str, StepResult]]) -> list[tuple[str, StepResult]]:
        if not self._hwm:
            return results
        kept = []
        for g, r in results:
            if r.ts_ns <= self._hwm.get(g, -1):
                self.counters["records_suppressed"] += 1
            else:
                kept.append((g, r))
                self._hwm.pop(g, None)  # past the crash point for this group
        return kept

    def queue(self, records: list[Record]) -> None:
        """Records of the component's own (its counters) to go out with the next output write."""
        self._pending += records

    def _flush(self) -> bool:
        """Write pending output records; False (kept pending) while the output stream refuses them."""
        if not self._pending:
            return True
        try:
            seq = self.writer.write(self._pending)
        except StreamError as exc:
            if self._errors.get("output") != str(exc):
                log.warning("%s: writing %s failed (input reading paused): %s",
                            self.name, self.cfg.output_stream.name, exc)
            self._errors["output"] = str(exc)
            return False
        self._errors.pop("output", None)
        self.counters["records_written"] += len(self._pending)
        self._pending = []
        self._out_next_seq = seq + 1
        return True

    # ---- persistence ----------------------------------------------------------------------------------------

    def _context(self) -> dict[str, Any]:
        positions = dict(self._saved_positions)  # streams not open now keep their saved position
        positions.update({s: r.position for s, r in self.readers.items() if r is not None})
        return {
            "positions": positions,
            "clock": {"source_ns": self._clock, "polled_ns": self._polled},
            "output": {"stream": self.cfg.output_stream.name, "next_seq": self._out_next_seq},
        }

    def maybe_save(self) -> bool:
        """Save when due (interval, a group fitted); then commit the input positions. Never with outputs pending."""
        if self._pending:
            return False
        self.det.context = self._context()
        try:
            saved = self.det.maybe_save(now_ns())
        except OSError as exc:
            return self._save_failed(exc)
        if saved:
            self._saved()
        return saved

    def save(self) -> bool:
        """Save now (shutdown, configuration change), then commit the input positions."""
        if self._pending:
            log.error("%s: %d output records could not be written; the model is not saved past them",
                      self.name, len(self._pending))
            return False
        self.det.context = self._context()
        try:
            self.det.save()
        except OSError as exc:
            return self._save_failed(exc)
        self._saved()
        return True

    def _saved(self) -> None:
        self.counters["model_saves"] += 1
        self.last_save_ns = now_ns()
        self._saved_positions = dict(self.det.context["positions"])
        self._errors.pop("save", None)
        for stream, reader in self.readers.items():
            if reader is None:
                continue
            try:  # only for gatewayctl buffer: the model file holds the positions that count (see above)
                reader.commit(reader.position)
            except OSError as exc:
                if self._errors.get("positions") != str(exc):
                    log.warning("%s: recording the position in %s failed (retried at the next save; the model "
                                "file keeps it meanwhile): %s", self.name, stream, exc)
                self._errors["positions"] = str(exc)
                return
        self._errors.pop("positions", None)

    def _save_failed(self, exc: OSError) -> bool:
        self.counters["model_save_errors"] += 1
        if self._errors.get("save") != str(exc):
            log.error("%s: saving the model to %s failed (retried at the next save): %s",
                      self.name, self.cfg.model_dir, exc)
        self._errors["save"] = str(exc)
        return False

    # ---- configuration and status ---------------------------------------------------------------------------

    def reconfigure(self, cfg: AnomalyDetectorConfig) -> dict[str, str]:
        """New groups or settings that need no new streams or model folder: unchanged groups keep their model."""
        detector_cfg = cfg.detector_config()
        if detector_cfg is None:
            raise ValueError("Engine needs at least one group")
        outcome = self.det.reconfigure(detector_cfg)
        self.cfg = cfg
        self.save()  # a relearning group must not come back from an old file after a crash
        return outcome

    def metric_values(self) -> dict[str, int]:
        """The counters written as METRIC records: the engine's, and its input readers' losses summed."""
        readers = [r for r in self.readers.values() if r is not None]
        return {**self.counters, "messages_lost": sum(r.messages_lost for r in readers),
                "corrupt_messages_read": sum(r.corrupt_messages_read for r in readers)}

    def status(self) -> dict[str, Any]:
        """The engine's part of the status file (see :mod:`gateway.anomaly.component`)."""
        inputs: dict[str, Any] = {}
        for stream, reader in self.readers.items():
            if reader is None:
                inputs[stream] = {"state": "waiting"}
                continue
            try:
                backlog: int | None = reader.backlog()
            except StreamError:
                backlog = None
            inputs[stream] = {
                "state": "error" if stream in self._errors else "reading",
                "position": reader.position,
                "committed": reader.committed,
                "backlog_messages": backlog,
                **{k: getattr(reader, k) for k in INPUT_COUNTERS},
            }
        return {
            "model_dir": self.cfg.model_dir,
            "restore": self.restore,
            "last_save_ns": self.last_save_ns,
            "clock_ns": self._clock,
            "inputs": inputs,
            "output_stream": self.cfg.output_stream.name,
            "pending_outputs": len(self._pending),
            "counters": dict(self.counters),
            "errors": dict(self._errors),
            "groups": self.det.status(),
        }
