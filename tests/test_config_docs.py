"""The configuration reference in docs/*.md is generated from the models (tools/config_docs.py) and kept fresh."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tools") not in sys.path:  # tools/ holds scripts, imported by their own name as the other tests do
    sys.path.insert(0, str(ROOT / "tools"))

import config_docs  # noqa: E402
from config_docs import main, resolve, stale, uncovered  # noqa: E402

DOCS = ROOT / "docs"


def _copy(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("examples"))
    return docs


def test_generated_regions_match_the_models() -> None:
    problems = stale()
    assert not problems, "\n".join(problems) + "\nrun: .venv/bin/python -m tools.config_docs --write"


def test_every_component_connection_and_destination_model_has_a_table() -> None:
    problems = uncovered()
    assert not problems, "\n".join(problems)


def test_a_description_edited_by_hand_is_stale(tmp_path: Path) -> None:
    docs = _copy(tmp_path)
    doc = docs / "publisher.md"
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `fsync` |"))
    doc.write_text(text.replace(row, row.replace("fsync after every batch", "fsync now and then"), 1))
    assert stale(docs) == ["docs/publisher.md: factoryedge.Publisher:destinations[file]: stale (run python -m "
                           "tools.config_docs --write)"]


def test_a_model_without_a_table_is_named(tmp_path: Path) -> None:
    docs = _copy(tmp_path)
    doc = docs / "publisher.md"
    key = "factoryedge.Publisher:destinations[kinesis]"
    text = doc.read_text()
    start, end = text.index(f"<!-- BEGIN GENERATED: {key} -->"), text.index(f"<!-- END GENERATED: {key} -->")
    doc.write_text(text[:start] + text[end + len(f"<!-- END GENERATED: {key} -->"):])
    missing = uncovered(docs)
    assert len(missing) == 1 and "gateway.destinations.kinesis." in missing[0] and "no generated region" in missing[0]


def test_keys_name_models_by_where_they_are_used() -> None:
    assert resolve("factoryedge.Publisher:destinations[mqtt]").model_fields["type"].default == "mqtt"
    assert "route" in resolve("factoryedge.Publisher:destinations").model_fields  # what every destination has
    assert resolve("ConnectionBase").__name__ == "ConnectionBase"
    with pytest.raises(LookupError, match="no member of type 's3'"):
        resolve("factoryedge.Publisher:destinations[s3]")
    with pytest.raises(LookupError, match="no field 'colour'"):
        resolve("factoryedge.Publisher:colour")


def test_check_exits_1_on_stale_docs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(config_docs, "stale", lambda docs=DOCS: ["docs/x.md: K: stale"])
    assert main(["--check"]) == 1 and "docs/x.md: K: stale" in capsys.readouterr().err
