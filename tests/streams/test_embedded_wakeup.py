"""A reader of the embedded store waiting for messages is woken by the kernel when another process appends
(inotify on the stream's folder), instead of polling the files; where inotify is missing it polls as before."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.streams import StreamSpec, notify
from gateway.streams.embedded import EmbeddedStore


def test_a_waiting_reader_is_woken_by_an_append_from_another_store(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reader_store, writer_store = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)  # two processes' views
    reader_store.create_stream(StreamSpec(name="s"))
    waiting, woken = threading.Event(), []
    real_wait = notify.FolderWatch.wait

    def wait(self: notify.FolderWatch, timeout_s: float) -> bool:
        waiting.set()
        woken.append(real_wait(self, 30))  # no backstop look: only the kernel's word ends this wait
        return woken[-1]

    def no_polling(_s: float) -> None:
        raise AssertionError("the reader polled the files instead of waiting for the kernel")

    monkeypatch.setattr(notify.FolderWatch, "wait", wait)
    monkeypatch.setattr(time, "sleep", no_polling)  # the embedded store polls with it
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(reader_store.read("s", 0, timeout_s=60)))
    reader.start()
    assert waiting.wait(30), "the reader never waited"
    writer_store.append("s", b"new")
    reader.join(30)
    assert [m.payload for m in got] == [b"new"]
    # Every wait ended by the kernel's word, none by its timeout. The append's reservation of the segment's blocks
    # (fallocate, a modification too) may wake the reader once before the write: it then looks again and waits.
    assert woken and all(woken)
    reader_store.close()
    writer_store.close()


def test_without_inotify_a_reader_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="s"))
    monkeypatch.setattr(notify, "_LIBC", None)
    assert notify.watch(str(tmp_path)) is None
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 3:
            store.append("s", b"late")  # the third look finds it

    monkeypatch.setattr(time, "sleep", sleep)
    assert [m.payload for m in store.read("s", 0, timeout_s=60)] == [b"late"]
    assert len(slept) == 3
    store.close()
