"""The detector: records in, score / alarm records out, model saved and restored. What the component wraps.

Who calls what: the component (or the offline replay) calls :meth:`Detector.restore` once, then for each batch
:meth:`Detector.offer` every record and :meth:`Detector.poll` with the current time, writing the returned records to
the output stream; :meth:`Detector.maybe_save` after each poll; :meth:`Detector.close` on shutdown. Nothing here
blocks on I/O except saving and restoring.

Output records (``source`` = the detector's source name), per group ``g`` under ``<output_prefix>/g/``:

- ``score`` (Kind.SCORE): forest score / calibrated threshold, one per scored vector; 1.0 is the alarm line.
- ``alarm`` (Kind.ALARM): True when raised, False when cleared (only on change).
- ``attribution`` (Kind.ALARM): with each raise, the most contributing tags, e.g. ``"XMV10:0.71,XMEAS9:0.12"``.
- ``state`` (Kind.METRIC): ``learning`` / ``scoring`` on start and on change, so "no alarms" is never silent.

Corrupt model file: it is renamed aside (``model.zip.corrupt-<time>``), an ERROR is logged and every group starts
learning again, announcing ``state=learning``. A model of another format version is refused (raises); the component
sets it aside with :meth:`Detector.set_aside` and relearns.

Besides the groups' models the file holds each group's assembler (latest member values, next tick) and
:attr:`Detector.context`, an opaque JSON object the owner saves with the model: the component keeps there the input
positions the saved state has consumed, so that model and positions can never disagree.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.anomaly import persist
from gateway.anomaly.assembler import NS, VectorAssembler
from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.model import GroupModel, StepResult, Updates
from gateway.record import Kind, Quality, Record, now_ns, start_seq

log = logging.getLogger(__name__)

#: Invalid "missing" vectors before a tag that never arrived is logged (collectors start at different times).
MISSING_LOG_AFTER = 10


class Detector:
    """Scores every configured group; owns their models and the model file."""

    def __init__(
        self,
        config: AnomalyConfig,
        model_dir: str | Path | None = None,
        *,
        source: str = "anomaly",
        updates: Updates = "gated",
    ) -> None:
        self.config = config
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.source = source
        self.updates: Updates = updates
        self.models = {g.name: GroupModel(g) for g in config.groups}
        self.assemblers = {g.name: VectorAssembler(g) for g in config.groups}
        # microseconds of the start, as the collectors and the publisher: the per-source sequence keeps rising across
        # restarts (from 0 it restarted below what a crashed run had written: out of order per tag downstream)
        self._seq = start_seq()
        self._last_save_ns: int | None = None
        self._announced: dict[str, str] = {}
        self._states_at_save = {n: m.state for n, m in self.models.items()}
        self._missing_logged: set[str] = set()
        #: Last scored result per group (status: current score, last scored time).
        self.last: dict[str, StepResult] = {}
        #: Saved with the model and restored with it; the owner's (see the module docstring).
        self.context: dict[str, Any] = {}

    def restore(self) -> str:
        """Load the model file if there is one.

        Returns:
            ``fresh`` (no file: all groups learn), ``restored``, or ``relearning`` (corrupt file set aside).

        Raises:
            persist.ModelVersionError: the file is from another format version.
        """
        if self.model_dir is None:
            return "fresh"
        try:
            manifest, forests = persist.load(self.model_dir)
            restored = self._restore_groups(manifest, forests)
        except FileNotFoundError:
            return "fresh"
        except persist.ModelCorrupt as exc:
            aside = persist.set_aside(self.model_dir)
            log.error("anomaly model corrupt, kept as %s; ALL GROUPS RELEARN from the live stream: %s", aside, exc)
            return "relearning"
        self.models.update(restored)
        for name, state in (manifest.get("assemblers") or {}).items():
            if name in restored:
                self.assemblers[name].load_state(state)
        context = manifest.get("context")
        self.context = dict(context) if isinstance(context, dict) else {}
        self._states_at_save = {n: m.state for n, m in self.models.items()}
        return "restored"

    def set_aside(self, reason: str) -> Path | None:
        """Move the model file aside (``model.zip.<reason>-<time>``) so that every group learns again."""
        if self.model_dir is None or not persist.model_path(self.model_dir).exists():
            return None
        aside = persist.set_aside(self.model_dir, reason)
        log.error("anomaly model %s kept as %s; ALL GROUPS RELEARN from the live stream", reason, aside)
        return aside

    def reconfigure(self, config: AnomalyConfig) -> dict[str, str]:
        """Apply a new configuration while running: a group whose :meth:`TagGroup.fingerprint` is unchanged keeps
        its model (scoring-time settings apply at once); a new or changed group learns. Returns group -> ``kept`` /
        ``relearn`` / ``new`` / ``removed``."""
        outcome: dict[str, str] = {}
        models: dict[str, GroupModel] = {}
        assemblers: dict[str, VectorAssembler] = {}
        for g in config.groups:
            old = self.models.get(g.name)
            if old is not None and old.group.fingerprint() == g.fingerprint():
                old.group = g
                self.assemblers[g.name].group = g
                models[g.name], assemblers[g.name] = old, self.assemblers[g.name]
                outcome[g.name] = "kept"
                continue
            models[g.name], assemblers[g.name] = GroupModel(g), VectorAssembler(g)
            outcome[g.name] = "new" if old is None else "relearn"
            self._announced.pop(g.name, None)
            self.last.pop(g.name, None)
            self._missing_logged.discard(g.name)
        for name in set(self.models) - set(models):
            outcome[name] = "removed"
            self._announced.pop(name, None)
            self.last.pop(name, None)
        for name, what in sorted(outcome.items()):
            if what == "relearn":
                log.warning("anomaly group %r changed (tags, shingle, forest or calibration): it learns again", name)
            elif what != "kept":
                log.info("anomaly group %r %s", name, what)
        self.config, self.models, self.assemblers = config, models, assemblers
        return outcome

    def _restore_groups(self, manifest: dict[str, Any], forests: dict[str, bytes]) -> dict[str, GroupModel]:
        """Rebuild every configured group the file holds; any inconsistency makes the whole file corrupt."""
        out: dict[str, GroupModel] = {}
        try:
            saved: dict[str, Any] = manifest["groups"]
            for name, model in self.models.items():
                state = saved.get(name)
                if state is None:
                    log.warning("anomaly group %r is not in the saved model: it learns from the live stream", name)
                elif state["fingerprint"] != model.group.fingerprint():
                    log.warning(
                        "anomaly group %r changed (tags, shingle or forest) since the model was saved: relearning", name
                    )
                else:
                    out[name] = GroupModel.from_state(model.group, state, forests.get(name))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, zlib.error) as exc:
            # a CRC-valid file whose content does not fit (e.g. a hand-edited manifest, a forest the library rejects)
            raise persist.ModelCorrupt(f"model content is inconsistent: {exc!r}", fix="re-fit or relearn") from exc
        for name in set(saved) - set(self.models):
            log.warning("saved anomaly group %r is no longer configured: ignored", name)
        return out

    def offer(self, record: Record) -> None:
        """Feed one collector record to every group's assembler."""
        for a in self.assemblers.values():
            a.offer(record)

    def offer_many(self, records: Iterable[Record]) -> None:
        """Feed a batch of records."""
        for r in records:
            self.offer(r)

    def poll_results(self, now_ns: int) -> list[tuple[str, StepResult]]:
        """Assemble, learn or score what is due at ``now_ns``; the raw results (the offline replay uses these)."""
        out: list[tuple[str, StepResult]] = []
        for name, assembler in self.assemblers.items():
            model = self.models[name]
            for vec in assembler.poll(now_ns):
                result = model.step(vec, self.updates)
                if result is not None:
                    out.append((name, result))
                    self.last[name] = result
            self._check_missing(name, assembler)
        return out

    def poll(self, now_ns: int) -> list[Record]:
        """Everything due at ``now_ns`` as output records (see the module docstring)."""
        return self.records(self.poll_results(now_ns), now_ns)

    def records(self, results: list[tuple[str, StepResult]], now_ns: int) -> list[Record]:
        """Output records of ``results`` (from :meth:`poll_results`), after any due ``state`` announcements."""
        records = self._state_records(now_ns)
        prefix = self.config.output_prefix
        for name, r in results:
            records.append(self._record(f"{prefix}/{name}/score", round(r.score, 6), r.ts_ns, now_ns, Kind.SCORE))
            if r.changed:
                records.append(self._record(f"{prefix}/{name}/alarm", r.alarm, r.ts_ns, now_ns, Kind.ALARM))
                if r.alarm:
                    text = ",".join(f"{t}:{s:.2f}" for t, s in r.top_tags)
                    records.append(self._record(f"{prefix}/{name}/attribution", text, r.ts_ns, now_ns, Kind.ALARM))
        return records

    def _check_missing(self, name: str, assembler: VectorAssembler) -> None:
        """Log once when member tags never arrived although vectors were due (a typo, a tag not collected)."""
        missing = sum(n for reason, n in assembler.invalid.items() if reason.startswith("missing:"))
        if name not in self._missing_logged and missing >= MISSING_LOG_AFTER and assembler.missing_tags():
            self._missing_logged.add(name)
            log.error(
                "anomaly group %r: tags %s never arrived (%d vectors invalid): the group cannot learn or score. "
                "Fix: check the tag names against `gatewayctl tail`, or collect these tags",
                name, assembler.missing_tags(), missing,
            )
        elif name in self._missing_logged and not assembler.missing_tags():
            self._missing_logged.discard(name)
            log.info("anomaly group %r: every member tag now arrives", name)

    def _state_records(self, now: int) -> list[Record]:
        out = []
        for name, model in self.models.items():
            if self._announced.get(name) != model.state:
                self._announced[name] = model.state
                log.info("anomaly group %r is %s", name, model.state)
                out.append(
                    self._record(f"{self.config.output_prefix}/{name}/state", model.state, now, now, Kind.METRIC)
                )
        return out

    def _record(self, tag: str, value: float | bool | str, ts: int, now: int, kind: Kind) -> Record:
        self._seq += 1
        return Record(self.source, tag, value, Quality.GOOD, ts, now, self._seq, kind)

    def save(self) -> Path | None:
        """Write the whole model (all groups, fitted or still learning) atomically; None without a model_dir."""
        if self.model_dir is None:
            return None
        states = {n: m.to_state() for n, m in self.models.items()}
        forests = {n: b for n, m in self.models.items() if (b := m.forest_bytes()) is not None}
        extra = {"assemblers": {n: a.to_state() for n, a in self.assemblers.items()}, "context": self.context}
        self._states_at_save = {n: m.state for n, m in self.models.items()}
        return persist.save(self.model_dir, states, forests, extra)

    def maybe_save(self, now: int | None = None) -> bool:
        """Save when ``save_interval_s`` elapsed since the last save, or when a group changed state (fitted)."""
        now = now if now is not None else now_ns()
        if self._last_save_ns is None:
            self._last_save_ns = now
        states = {n: m.state for n, m in self.models.items()}
        due = now - self._last_save_ns >= self.config.save_interval_s * NS
        if not due and states == self._states_at_save:
            return False
        self.save()
        self._last_save_ns = now
        return True

    def close(self) -> None:
        """Save on shutdown."""
        self.save()

    def status(self) -> dict[str, Any]:
        """Per group: state, learning progress, last score and its time, threshold (raw forest score), alarm,
        counters, invalid vectors by reason, tags that never arrived."""
        out: dict[str, Any] = {}
        for name, m in self.models.items():
            last = self.last.get(name)
            out[name] = {
                "state": m.state,
                "backend": m.group.forest.backend,
                "learning_progress": f"{len(m.learning)}/{m.group.training_points}",
                "learning_share": round(1.0 if m.forest is not None else len(m.learning) / m.group.training_points, 4),
                "score": round(last.score, 6) if last is not None else None,
                "last_scored_ns": last.ts_ns if last is not None else None,
                "threshold": m.threshold,
                "alarm": m.alarm.active,
                "counters": dict(m.counters),
                "invalid": dict(self.assemblers[name].invalid),
                "non_numeric_values": dict(self.assemblers[name].non_numeric_values),
                "missing_tags": self.assemblers[name].missing_tags(),
            }
        return out
