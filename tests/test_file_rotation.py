"""File destination rotation deletes only its own rotated files (issue 13 item 13): operators' files that share the
prefix, and files that a glob built from the path would match, stay."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from gateway.destinations.file import FileConfig, FileDestination
from gateway.record import Quality, Record

ROTATED = r"\.\d{8}T\d{6}\.\d{6}"


def _records(n: int, size: int = 300) -> list[Record]:
    return [Record("src", f"tag{i}", "x" * size, Quality.GOOD, 1_700_000_000_000_000_000 + i,
                   1_700_000_000_000_000_000 + i, i) for i in range(n)]


def _write_batches(path: Path, keep: int, batches: int) -> None:
    async def go() -> None:
        sink = FileDestination(FileConfig(name="f", path=str(path), max_bytes=1024, keep=keep, fsync=False))
        await sink.start()
        try:
            for _ in range(batches):
                await sink.send(_records(3))  # ~1 KiB: every batch rotates the one before
        finally:
            await sink.close(5.0)

    asyncio.run(go())


def test_rotation_leaves_files_that_only_share_the_prefix(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    theirs = {name: f"operator's {name}\n" for name in (
        "records.jsonl.old", "records.jsonl.1", "records.jsonl.0-notes.txt", "records.jsonl.bak", "notes.txt",
        "records.jsonl.20240101T000000.000001.keep", "records.jsonl.20240101T000000")}
    for name, text in theirs.items():
        (out / name).write_text(text)
    _write_batches(out / "records.jsonl", keep=2, batches=8)
    for name, text in theirs.items():
        assert (out / name).read_text() == text, f"{name} was touched by rotation"
    rotated = [p.name for p in out.iterdir() if re.fullmatch(re.escape("records.jsonl") + ROTATED, p.name)]
    assert len(rotated) == 2, sorted(p.name for p in out.iterdir())


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    _write_batches(path, keep=3, batches=12)  # many rotations within one second
    rotated = sorted(p for p in tmp_path.iterdir() if p.name != "records.jsonl")
    assert len(rotated) == 3
    # the oldest are deleted: the files kept, in name order, were written in that order (a suffix that does not
    # sort in time deletes a newer file and keeps an older one)
    assert [p.stat().st_mtime_ns for p in rotated] == sorted(p.stat().st_mtime_ns for p in rotated)


def test_a_path_with_glob_characters_rotates_its_own_files_only(tmp_path: Path) -> None:
    (tmp_path / "data1.jsonl.x").write_text("unrelated\n")  # what the glob 'data[1].jsonl.*' matches
    (tmp_path / "dataX.jsonl.20240101T000000.000001").write_text("unrelated\n")  # what 'data?.jsonl.*' matches
    path = tmp_path / "data[1].jsonl"
    _write_batches(path, keep=2, batches=8)
    assert (tmp_path / "data1.jsonl.x").exists()
    assert (tmp_path / "dataX.jsonl.20240101T000000.000001").exists()
    rotated = [p for p in tmp_path.iterdir() if re.fullmatch(re.escape(path.name) + ROTATED, p.name)]
    assert len(rotated) == 2  # the gateway's own rotated files are bounded too
