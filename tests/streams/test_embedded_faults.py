"""Crash, concurrency and disk faults of the embedded store, with real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import StoreWriteError
from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parents[2]


def _writer(root: Path, stream: str, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.streams.writer_proc", str(root), stream, tag],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )


def _acknowledged(proc: subprocess.Popen[str], want: int) -> list[tuple[int, str]]:
    """Read at least ``want`` acknowledgement lines (append returned) from a writer."""
    assert proc.stdout is not None
    acks: list[tuple[int, str]] = []
    while len(acks) < want:
        line = proc.stdout.readline()
        if not line:
            break
        seq, ident = line.split()
        acks.append((int(seq), ident))
    return acks


def test_kill_9_mid_append_loses_no_acknowledged_append(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="crash", segment_size_bytes=64 * 1024))
    rng = random.Random(7)
    acked: list[tuple[int, str]] = []
    for run in range(12):
        proc = _writer(tmp_path, "crash", f"r{run}")
        acked += _acknowledged(proc, rng.randint(20, 400))
        proc.send_signal(signal.SIGKILL)  # mid-append, at an arbitrary point
        assert proc.stdout is not None
        acked += [(int(s), i) for s, i in (ln.split() for ln in proc.stdout.read().splitlines())]
        proc.wait()
    messages = store.read("crash", 0, max_count=1_000_000)
    seqs = [m.seq for m in messages]
    assert seqs == list(range(len(seqs))), "sequence numbers must have no gaps"
    by_seq = {m.seq: m.payload for m in messages}
    for seq, ident in acked:
        assert by_seq[seq].startswith(f"{ident}:".encode()), f"acknowledged append {seq} ({ident}) lost"
    # After the crashes a new writer continues the sequence.
    assert store.append("crash", b"after") == len(seqs)


def test_two_writer_processes_interleave_without_gaps_or_duplicates(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="shared", segment_size_bytes=32 * 1024, flush_on_write=False))
    procs = [_writer(tmp_path, "shared", f"w{i}") for i in range(2)]
    acks = [_acknowledged(p, 1500) for p in procs]
    for p in procs:
        p.kill()
        p.wait()
    messages = store.read("shared", 0, max_count=1_000_000)
    seqs = [m.seq for m in messages]
    assert seqs == list(range(len(seqs)))
    by_seq = {m.seq: m.payload for m in messages}
    for ack in acks:
        for seq, ident in ack:
            assert by_seq[seq].startswith(f"{ident}:".encode())
    # each writer's own messages stay in its order
    for i in range(2):
        counters = [int(p.split(b":")[1]) for p in (m.payload for m in messages) if p.startswith(f"w{i}:".encode())]
        assert counters == sorted(counters)


_DISK_FULL = """
import resource, signal, sys
from gateway.errors import StoreWriteError
from gateway.streams.embedded import EmbeddedStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = EmbeddedStore(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
i = 0
try:
    while True:
        seq = store.append("full", b"v" * 300)
        print(seq, flush=True)
        i += 1
except StoreWriteError as exc:
    print("ERR", exc, flush=True)
"""


def test_disk_full_fails_loudly_and_keeps_stored_data(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="full"))
    out = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout.splitlines()
    assert out[-1].startswith("ERR") and "free disk space" in out[-1], out[-3:]
    acked = [int(x) for x in out[:-1]]
    assert len(acked) > 10
    messages = store.read("full", 0, max_count=10_000)
    assert [m.seq for m in messages] == acked
    assert all(m.payload == b"v" * 300 for m in messages)
    assert store.append("full", b"after") == len(acked)  # writable again with space


def test_unwritable_store_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreWriteError, match="writable folder"):
        EmbeddedStore(blocker / "store")


def test_time_to_live_drops_whole_old_segments(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="ttl", segment_size_bytes=2048, ttl_s=3600))
    for _ in range(40):
        store.append("ttl", b"x" * 200)
    folder = tmp_path / "streams" / "ttl"
    segs = seg.list_segments(str(folder))
    assert len(segs) > 3
    old = time.time() - 7200
    for first in segs[:2]:  # the two oldest segments are two hours old
        os.utime(folder / seg.segment_name(first), (old, old))
    store.append("ttl", b"new")
    info = store.describe("ttl")
    assert info.oldest_seq == segs[2]
    assert info.dropped_messages == segs[2]


def test_torn_tail_is_truncated_and_sequence_continues(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="t"))
    for i in range(5):
        store.append("t", f"m{i}".encode())
    store.close()
    segfile = tmp_path / "streams" / "t" / seg.segment_name(0)
    with open(segfile, "ab") as f:  # half a frame, as a crash mid-write would leave
        f.write(seg.encode_frame(5, 0, b"half written")[:15])
    fresh = EmbeddedStore(tmp_path)
    assert [m.payload for m in fresh.read("t", 0, max_count=100)] == [f"m{i}".encode() for i in range(5)]
    assert fresh.append("t", b"m5") == 5
    assert [m.payload for m in fresh.read("t", 5)] == [b"m5"]


def test_corrupt_frame_on_disk_is_skipped_and_counted(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="c"))
    for i in range(5):
        store.append("c", f"message-{i}".encode())
    segfile = tmp_path / "streams" / "c" / seg.segment_name(0)
    data = bytearray(segfile.read_bytes())
    frame = seg.HEADER_SIZE + len(b"message-0")
    data[2 * frame + seg.HEADER_SIZE + 3] ^= 0xFF  # flip a byte inside message 2's payload
    segfile.write_bytes(bytes(data))
    fresh = EmbeddedStore(tmp_path)
    got = fresh.read("c", 0, max_count=100)
    assert [m.seq for m in got] == [0, 1, 3, 4]
    assert fresh.corrupt_frames == 1
