"""The detector: records in, score / alarm records out, model saved and restored. What the component wraps.

Who calls what: the component (or the offline replay) calls :meth:`Detector.restore` once, then for each batch
:meth:`Detector.offer` every record and :meth:`Detector.poll` with the current time, writing the returned records to
the output stream; :meth:`Detector.maybe_save` after each poll; :meth:`Detector.close` on shutdown. Nothing here
blocks on I/O except saving and restoring.

Output records (``source`` = the detector's source name), per group ``g`` under ``<output_prefix>/g/``:

- ``score`` (Kind.SCORE): forest score / calibrated threshold, one per scored vector; 1.0 is the alarm line.
- ``alarm`` (Kind.ALARM): True when raised, False when cleared (only on change).
- ``top_tags`` (Kind.ALARM): with each raise, the most contributing tags, e.g. ``"XMV10:0.71,XMEAS9:0.12"``.
- ``state`` (Kind.METRIC): ``learning`` / ``scoring`` on start and on change, so "no alarms" is never silent.

Corrupt model file: it is renamed aside (``model.zip.corrupt-<time>``), an ERROR is logged and every group starts
learning again, announcing ``state=learning``. A model of another format version is refused (raises).
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
from gateway.record import Kind, Quality, Record, now_ns

log = logging.getLogger(__name__)


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
        self._seq = 0
        self._last_save_ns: int | None = None
        self._announced: dict[str, str] = {}
        self._states_at_save = {n: m.state for n, m in self.models.items()}

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
        self._states_at_save = {n: m.state for n, m in self.models.items()}
        return "restored"

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
        return out

    def poll(self, now_ns: int) -> list[Record]:
        """Everything due at ``now_ns`` as output records (see the module docstring)."""
        results = self.poll_results(now_ns)
        records = self._state_records(now_ns)
        prefix = self.config.output_prefix
        for name, r in results:
            records.append(self._record(f"{prefix}/{name}/score", round(r.score, 6), r.ts_ns, now_ns, Kind.SCORE))
            if r.changed:
                records.append(self._record(f"{prefix}/{name}/alarm", r.alarm, r.ts_ns, now_ns, Kind.ALARM))
                if r.alarm:
                    text = ",".join(f"{t}:{s:.2f}" for t, s in r.top_tags)
                    records.append(self._record(f"{prefix}/{name}/top_tags", text, r.ts_ns, now_ns, Kind.ALARM))
        return records

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
        self._states_at_save = {n: m.state for n, m in self.models.items()}
        return persist.save(self.model_dir, states, forests)

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
        """Per group: state, threshold, counters, invalid vectors by reason, tags that never arrived."""
        return {
            name: {
                "state": m.state,
                "backend": m.group.forest.backend,
                "threshold": m.threshold,
                "alarm": m.alarm.active,
                "learning_progress": f"{len(m.learning)}/{m.group.training_points}",
                "counters": dict(m.counters),
                "invalid": dict(self.assemblers[name].invalid),
                "missing_tags": self.assemblers[name].missing_tags(),
            }
            for name, m in self.models.items()
        }
