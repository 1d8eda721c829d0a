"""Detector end to end on records: output records, persistence, restart, bad model files."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gateway.anomaly import Detector, ModelVersionError, persist
from gateway.record import Kind, Record
from tests.support.anomaly import NS, T0, config, group, records, synthetic


def _feed(det: Detector, data: np.ndarray, start: int) -> list[Record]:
    out: list[Record] = []
    for k, row in enumerate(data):
        ts = T0 + (start + k) * NS
        det.offer_many(records(row, ts))
        out += det.poll(ts)
    return out


def _scores(out: list[Record]) -> list[float]:
    return [float(r.value) for r in out if r.kind == Kind.SCORE]  # type: ignore[arg-type]


def test_learns_from_the_stream_then_emits_scores_alarms_and_attribution(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    assert det.restore() == "fresh"
    learning = _feed(det, synthetic(300, seed=1), 0)
    assert [(r.tag, r.value) for r in learning if r.kind == Kind.METRIC] == [
        ("anomaly/unit/state", "learning"),
        ("anomaly/unit/state", "scoring"),
    ]
    assert det.maybe_save(T0 + 300 * NS)  # just fitted: saved at once, so a restart does not relearn
    out = _feed(det, synthetic(40, seed=2, shift={"valve": 4.0}, start=20), 300)
    alarms = [r for r in out if r.kind == Kind.ALARM]
    assert [r.tag for r in alarms] == ["anomaly/unit/alarm", "anomaly/unit/attribution"]
    assert alarms[0].value is True
    assert str(alarms[1].value).startswith("valve:")
    assert len(_scores(out)) == 39


@pytest.mark.parametrize("backend_name", ["krcf", "rrcf"])
@pytest.mark.usefixtures("small_probe")  # rrcf's fit is mostly its probe of the score scale (conftest)
def test_restart_restores_the_model_and_continues_scoring_identically(tmp_path: Path, backend_name: str) -> None:
    cfg = config(training_points=300, forest={"backend": backend_name, "trees": 15, "samples_per_tree": 64})
    first = Detector(cfg, tmp_path)
    first.restore()
    _feed(first, synthetic(330, seed=3), 0)
    first.close()
    second = Detector(cfg, tmp_path)
    assert second.restore() == "restored"
    assert second.models["unit"].state == "scoring"
    after = synthetic(40, seed=4, shift={"temp": 3.0}, start=20)
    expected = _feed(first, after, 330)
    got = _feed(second, after, 330)
    assert _scores(got) == _scores(expected)
    assert len(_scores(got)) == 40  # the shingle was restored too: no refill after restart
    assert [r.value for r in got if r.kind == Kind.ALARM] == [r.value for r in expected if r.kind == Kind.ALARM]


def test_a_model_of_another_format_version_is_refused(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    _feed(det, synthetic(300, seed=5), 0)
    path = det.save()
    assert path is not None
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(entries["manifest.json"])
    manifest["format_version"] = 99
    entries["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)
    with pytest.raises(ModelVersionError, match=r"format version 99.*reads version 1"):
        Detector(config(training_points=300), tmp_path).restore()
    assert path.exists()  # refused, not discarded


def test_a_corrupt_model_is_set_aside_and_relearning_is_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    det = Detector(config(training_points=300), tmp_path)
    _feed(det, synthetic(300, seed=6), 0)
    path = det.save()
    assert path is not None
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    again = Detector(config(training_points=300), tmp_path)
    with caplog.at_level(logging.ERROR):
        assert again.restore() == "relearning"
    assert "ALL GROUPS RELEARN" in caplog.text
    assert not path.exists()
    assert len(list(tmp_path.glob("model.zip.corrupt-*"))) == 1
    out = _feed(again, synthetic(5, seed=7), 0)
    assert ("anomaly/unit/state", "learning") in [(r.tag, r.value) for r in out]
    assert _scores(out) == []


def test_truncated_and_foreign_files_are_corrupt(tmp_path: Path) -> None:
    persist.model_path(tmp_path).write_bytes(b"PK\x03\x04 definitely not a model")
    with pytest.raises(persist.ModelCorrupt, match="unreadable"):
        persist.load(tmp_path)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    _feed(det, synthetic(10, seed=8), 0)
    det.save()
    det.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    assert len(persist.load(tmp_path)[0]["groups"]["unit"]["learning"]) == 10  # learning progress survives too


def test_a_tag_that_never_arrives_is_reported_and_nothing_is_scored(tmp_path: Path) -> None:
    cfg = config(tags=["flow", "pressure", "temp", "level", "valve", "power", "typo_tag"], training_points=300)
    det = Detector(cfg, tmp_path)
    out = _feed(det, synthetic(20, seed=9), 0)
    status = det.status()["unit"]
    assert status["missing_tags"] == ["typo_tag"]
    assert status["invalid"] == {"missing:typo_tag": 20}
    assert status["learning_progress"] == "0/300"
    assert _scores(out) == []


def test_nan_values_are_invalid_not_scored(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    data = synthetic(320, seed=10)
    data[305:310, 1] = np.nan
    out = _feed(det, data, 0)
    assert det.status()["unit"]["invalid"] == {"bad:pressure": 5}
    assert all(np.isfinite(_scores(out)))


def test_periodic_save_follows_the_interval(tmp_path: Path) -> None:
    det = Detector(config(training_points=300).model_copy(update={"save_interval_s": 60.0}), tmp_path)
    assert det.maybe_save(T0) is False  # first call starts the clock
    assert det.maybe_save(T0 + 59 * NS) is False
    assert det.maybe_save(T0 + 60 * NS) is True
    assert persist.model_path(tmp_path).exists()
    assert det.maybe_save(T0 + 61 * NS) is False


def test_a_well_formed_file_with_a_broken_forest_is_corrupt_too(tmp_path: Path) -> None:
    det = Detector(config(training_points=300), tmp_path)
    _feed(det, synthetic(300, seed=11), 0)
    path = det.save()
    assert path is not None
    with zipfile.ZipFile(path) as zf:
        manifest = zf.read("manifest.json")
    with zipfile.ZipFile(path, "w") as zf:  # valid zip and CRCs, but the forest snapshot is garbage
        zf.writestr("manifest.json", manifest)
        zf.writestr("forest/unit.bin", b"not a forest")
    again = Detector(config(training_points=300), tmp_path)
    assert again.restore() == "relearning"
    assert again.models["unit"].state == "learning"


def test_a_group_whose_tags_changed_relearns_while_others_are_restored(tmp_path: Path) -> None:
    from gateway.anomaly import AnomalyConfig

    two = AnomalyConfig(groups=[group(training_points=300), group(name="other", training_points=300)])
    det = Detector(two, tmp_path)
    _feed(det, synthetic(300, seed=12), 0)
    det.save()
    changed = AnomalyConfig(
        groups=[group(training_points=300), group(name="other", tags=["flow", "temp"], training_points=300)]
    )
    again = Detector(changed, tmp_path)
    assert again.restore() == "restored"
    assert again.models["unit"].state == "scoring"
    assert again.models["other"].state == "learning"
