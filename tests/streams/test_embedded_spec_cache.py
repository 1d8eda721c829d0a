"""A writer notices another process's change to a stream's definition at its next append: a definition replaced (as
``create_stream`` writes it), edited in place, or deleted with its stream. The check runs at every append, so a
cheaper one (issue 18) must still see all three."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.errors import StreamNotFound
from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore


def _segments(root: Path) -> list[int]:
    return seg.list_segments(str(root / "streams" / "s"))


def test_a_definition_replaced_by_another_process_applies_at_the_next_append(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(StreamSpec(name="s", segment_size_bytes=1024 * 1024, flush_on_write=False))
    for i in range(3):
        assert a.append("s", b"x" * 800) == i
    assert _segments(tmp_path) == [0]
    b.create_stream(StreamSpec(name="s", segment_size_bytes=1024, flush_on_write=False))
    for i in range(3, 6):
        assert a.append("s", b"x" * 800) == i
    assert _segments(tmp_path) == [0, 3, 4, 5]  # one message per 1 KiB segment from the change on
    a.close()
    b.close()


def test_a_definition_edited_in_place_applies_at_the_next_append(tmp_path: Path) -> None:
    a = EmbeddedStore(tmp_path)
    a.create_stream(StreamSpec(name="s", segment_size_bytes=1024 * 1024, flush_on_write=False))
    assert a.append("s", b"x" * 800) == 0
    path = tmp_path / "streams" / "s" / "spec.json"
    ino = os.stat(path).st_ino
    with open(path, "r+b") as f:  # same file, new content (an editor that writes in place)
        f.truncate(0)
        f.write(StreamSpec(name="s", segment_size_bytes=1024, flush_on_write=False).model_dump_json().encode())
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's granularity
    assert os.stat(path).st_ino == ino
    for i in range(1, 4):
        assert a.append("s", b"x" * 800) == i
    assert _segments(tmp_path) == [0, 1, 2, 3]
    a.close()


def test_a_stream_deleted_by_another_process_is_not_found_at_the_next_append(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(StreamSpec(name="s", flush_on_write=False))
    assert a.append("s", b"x") == 0
    b.delete_stream("s")
    with pytest.raises(StreamNotFound, match="does not exist"):
        a.append("s", b"x")
    a.close()
    b.close()

