"""Hostile or hand-edited model files (issue 13 item 12): a CRC-valid manifest whose content does not fit is refused
with a clear error and every group relearns (no crash loop); a small zip that expands to a huge one is refused
before it is expanded, with bounded memory."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devkit.peers import ROOT
from gateway.anomaly import persist
from tests.support.anomaly import drain, make_engine, stepped_data, write_rows

Edit = Callable[[dict[str, Any]], None]


def _saved_model(tmp_path: Path) -> Path:
    """A real model file, fitted and saved by the engine (the unit group scores)."""
    engine, store = make_engine(tmp_path)
    write_rows(store, stepped_data()[:420], 0)
    drain(engine)
    engine.close()
    store.close()
    return persist.model_path(tmp_path / "model")


def _edit_manifest(path: Path, edit: Edit) -> None:
    """Rewrite the manifest as a hand edit would: the file stays a valid zip, every CRC right."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(entries["manifest.json"])
    edit(manifest)
    entries["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in entries.items():
            zf.writestr(n, b)


def _set(*keys: str, value: Any) -> Edit:
    def edit(m: dict[str, Any]) -> None:
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value
    return edit


EDITS: dict[str, tuple[Edit, str]] = {
    "groups is a list": (_set("groups", value=[]), "groups"),
    "group state not an object": (_set("groups", "unit", value=7), "groups.unit"),
    "threshold not a number": (_set("groups", "unit", "threshold", value="high"), "threshold"),
    "rotation of another size": (_set("groups", "unit", "whitener", "rotation", value=[[1.0, 0.0], [0.0, 1.0]]),
                                 "rotation"),
    "learning rows of another width": (_set("groups", "unit", "learning", value=[[1.0, 2.0]]), "learning"),
    "assembler state damaged": (_set("assemblers", "unit", "latest", value=5), "assemblers.unit.latest"),
    "saved positions not numbers": (_set("context", "positions", value={"factoryedge-opcua": "x"}),
                                    "context.positions"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_crc_valid_manifest_that_does_not_fit_is_refused_and_every_group_relearns(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    edit, named = EDITS[case]
    path = _saved_model(tmp_path)
    _edit_manifest(path, edit)
    with caplog.at_level(logging.ERROR):
        again, store = make_engine(tmp_path)  # today: AttributeError/KeyError out of open(), every restart
    assert again.restore == "relearning"
    errors = [r.getMessage() for r in caplog.records if "ALL GROUPS RELEARN" in r.getMessage()]
    assert len(errors) == 1 and named in errors[0], errors  # the message names what is wrong
    assert len(list((tmp_path / "model").glob("model.zip.corrupt-*"))) == 1
    assert again.status()["groups"]["unit"]["state"] == "learning"
    write_rows(store, stepped_data()[420:], 420)
    drain(again)  # runs on: learning, no crash
    assert again.status()["groups"]["unit"]["learning_progress"] == "79/400"
    again.close()
    store.close()


def _bomb(path: Path, expands_to: int) -> None:
    """A model zip of about a megabyte whose forest entry expands to ``expands_to`` bytes of zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": persist.FORMAT, "format_version": persist.FORMAT_VERSION, "saved_ns": 1, "groups": {}}
    chunk = bytes(4 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        with zf.open("forest/unit.bin", "w", force_zip64=True) as fh:
            for _ in range(expands_to // len(chunk)):
                fh.write(chunk)


PROBE = """
import resource, sys, time
from gateway.anomaly import persist
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    persist.load(sys.argv[1])
    outcome = "loaded"
except persist.ModelFileError as exc:
    outcome = f"refused: {exc}"
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before} {time.monotonic() - t0:.3f} {outcome}")
"""


def test_a_small_zip_that_expands_to_a_gibibyte_is_refused_quickly_with_bounded_memory(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _bomb(persist.model_path(model_dir), 1 << 30)
    assert persist.model_path(model_dir).stat().st_size < 5 << 20
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PROBE, str(model_dir)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    grew_kib, took, outcome = out.split(" ", 2)
    assert outcome.startswith("refused:") and "expand" in outcome, out
    assert int(grew_kib) < 64 * 1024, f"restore grew by {int(grew_kib) // 1024} MiB: {out}"
    assert float(took) < 2.0 and time.monotonic() - t0 < 30, out
