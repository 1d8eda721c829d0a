"""Writers of one stream exclude each other through an flock of the stream's ``lock`` file, which a store opens once
and keeps. When another process deletes the stream and makes it again, the kept descriptor is of the deleted file:
an flock on it excludes nobody who writes into the new stream (helper 45 found this reading the code)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from gateway.errors import StreamNotFound
from gateway.streams import StreamSpec
from gateway.streams.embedded import EmbeddedStore

SPEC = StreamSpec(name="s", flush_on_write=False)


def _held_by_someone(lock: Path) -> bool:
    """Whether the lock file at ``lock`` (as it is now) is locked, from a new open file description."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_lock_taken_after_another_process_made_the_stream_again_is_the_new_streams(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(SPEC)
    a.append("s", b"old")  # a keeps the lock file open from here
    b.delete_stream("s")
    b.create_stream(SPEC)
    a._locks.lock("s")
    try:
        assert _held_by_someone(tmp_path / "streams" / "s" / "lock")
    finally:
        a._locks.unlock("s")
    assert not _held_by_someone(tmp_path / "streams" / "s" / "lock")
    assert a.append("s", b"new") == 0
    assert b.append("s", b"next") == 1
    assert [m.payload for m in b.read("s", 0, max_count=10)] == [b"new", b"next"]
    a.close()
    b.close()


def test_a_stream_deleted_by_another_process_is_not_found_not_an_os_error(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(SPEC)
    a.append("s", b"old")
    b.delete_stream("s")
    with pytest.raises(StreamNotFound):
        a.append("s", b"lost?")
    a.close()
    b.close()


def test_a_lock_asked_for_after_the_folder_went_says_which_streams_there_are(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    a.create_stream(SPEC)
    b.create_stream(StreamSpec(name="other", flush_on_write=False))
    a.append("s", b"old")
    b.delete_stream("s")
    with pytest.raises(StreamNotFound, match="streams: other"):
        a._locks.lock("s")
    a._locks.lock("other")  # the store's own mutex was given back
    a._locks.unlock("other")
    a.close()
    b.close()
