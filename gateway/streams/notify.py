"""Wake a reader of the embedded store when a stream's folder changes (Linux inotify), instead of polling its files.

Writers and readers are separate processes (collector, publisher), so a reader waiting for new messages learns of an
append from the kernel: an inotify watch on the stream's folder reports every write to a segment and every segment
created, at no cost to the writer. Where inotify is missing (not Linux) or refused (the per-user limit of instances,
``fs.inotify.max_user_instances``), :func:`watch` returns None and the reader polls as before. A watch is only ever
a reason to look again, never a promise that something is there: spurious wake-ups (a counters file replaced) cost
one read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys
import time

_IN_MODIFY = 0x00000002  # a segment was written
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100  # a segment was created (rotation)
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05
# A reader woken by inotify still looks this often: a change the kernel does not report (a folder on a network
# file system written by another host) is then seen late, never missed.
_WATCH_BACKSTOP_S = 0.25


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class FolderWatch:
    """Changes to the files of one folder from its creation on; :meth:`wait` returns once one happened."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()  # not select.select: it fails on descriptors past 1023
        self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a change; True if one came (the events are consumed)."""
        if not self._poll.poll(max(0, round(timeout_s * 1000))):
            return False
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        os.close(self._fd)


def watch(folder: str) -> FolderWatch | None:
    """A watch on ``folder``, or None where inotify is not available (the caller then polls)."""
    if _LIBC is None:
        return None
    fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    if _LIBC.inotify_add_watch(fd, os.fsencode(folder), _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return FolderWatch(fd)


class Pause:
    """How a reader waits between two looks at a folder for what it wants: the first wait sets up a watch and
    returns at once (look again: something may have come between the first look and the watch), later ones wait
    for the kernel's word; without inotify, a short sleep growing from 2 to 50 ms."""

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._watch: FolderWatch | None = None
        self._asked = False
        self._sleep_s = _POLL_MIN_S

    def wait(self, remaining_s: float) -> None:
        if not self._asked:
            self._asked = True
            self._watch = watch(self._folder)
            if self._watch is not None:
                return
        if self._watch is not None:
            self._watch.wait(min(remaining_s, _WATCH_BACKSTOP_S))
        else:
            time.sleep(min(self._sleep_s, remaining_s))
            self._sleep_s = min(self._sleep_s * 2, _POLL_MAX_S)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
