"""Damaged bytes in the embedded store: one bad byte loses exactly the message it hit, never good data.

The sweep flips every bit of frame headers (and a sample of payload bytes) of one segment, one flip at a time, then
appends and reads as a restarted gateway would. It samples frames in ``make test``; ``FACTORYEDGE_SOAK=1``
(``make soak``) flips every header bit of every frame and more payload bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.errors import StreamError
from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore

SOAK = os.environ.get("FACTORYEDGE_SOAK") == "1"


def _payload(i: int) -> bytes:
    return f"message-{i}:".encode() + bytes((i * 7 + j) % 251 for j in range(40 + (i * 13) % 90))


def _filled(root: Path, n: int, segment_size: int = 16 * 1024 * 1024) -> EmbeddedStore:
    store = EmbeddedStore(root)
    store.create_stream(StreamSpec(name="s", segment_size_bytes=segment_size, flush_on_write=False))
    assert [store.append("s", _payload(i)) for i in range(n)] == list(range(n))
    return store


def _offsets(path: Path) -> list[int]:
    """Start of every frame in a healthy segment file, plus its size."""
    data = path.read_bytes()
    out, off = [], 0
    while off < len(data):
        out.append(off)
        off += seg.HEADER_SIZE + seg.HEADER.unpack_from(data, off)[0]
    return [*out, off]


def _flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _segment(root: Path, first: int) -> Path:
    return root / "streams" / "s" / seg.segment_name(first)


def test_bit_flip_in_a_middle_header_of_the_newest_segment_loses_one_message_not_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _filled(tmp_path, 30).close()
    path = _segment(tmp_path, 0)
    offsets = _offsets(path)
    damaged = path.read_bytes()[offsets[10]:offsets[11]]
    _flip(path, offsets[10] + 15, 0)  # lowest bit of frame 10's sequence number
    store = EmbeddedStore(tmp_path)  # a restarted writer
    assert [store.append("s", f"new-{i}".encode()) for i in range(25)] == list(range(30, 55)), \
        "acknowledged frames after the damage were truncated and their sequence numbers reused"
    # A destination that had sent up to 24 goes on from 25 and misses nothing.
    assert [m.seq for m in store.read("s", 25, max_count=100)] == list(range(25, 55))
    got = store.read("s", 0, max_count=100)
    assert [m.seq for m in got] == [*range(10), *range(11, 55)]
    assert all(m.payload == _payload(m.seq) for m in got if m.seq < 30)
    info = store.describe("s")
    assert (info.lost_messages, info.corrupt_bytes, info.next_seq) == (1, len(damaged), 55)
    assert "unacknowledged write" not in caplog.text and "lost 1 messages" in caplog.text
    bad = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
    assert len(bad) == 1 and stat.S_IMODE(bad[0].stat().st_mode) == 0o600
    flipped = bytearray(damaged)
    flipped[15] ^= 1
    assert bad[0].read_bytes() == bytes(flipped), "the damaged bytes are set aside as they were on disk"
    store.close()
    # The count survives a restart and is not counted again by the next process that reads past the damage.
    again = EmbeddedStore(tmp_path)
    assert [m.seq for m in again.read("s", 0, max_count=100)][9:11] == [9, 11]
    assert again.append("s", b"later") == 55
    assert again.describe("s").lost_messages == 1


def test_bad_length_in_a_sealed_segment_loses_one_message_not_the_rest_of_the_segment(tmp_path: Path) -> None:
    store = _filled(tmp_path, 60, segment_size=2048)
    segs = seg.list_segments(str(tmp_path / "streams" / "s"))
    assert len(segs) >= 3
    store.close()
    path = _segment(tmp_path, segs[0])
    offsets = _offsets(path)
    _flip(path, offsets[3] + 1, 4)  # length of message 3 grows by 1 MiB: past the end of the segment
    fresh = EmbeddedStore(tmp_path)
    got = fresh.read("s", 0, max_count=100)
    assert [m.seq for m in got] == [s for s in range(60) if s != 3]
    assert all(m.payload == _payload(m.seq) for m in got)
    info = fresh.describe("s")
    assert info.lost_messages == 1, "messages lost, not frames seen"
    assert info.corrupt_bytes == offsets[4] - offsets[3]


def test_damaged_sealed_tail_counts_the_messages_up_to_the_next_segment(tmp_path: Path) -> None:
    store = _filled(tmp_path, 60, segment_size=2048)
    segs = seg.list_segments(str(tmp_path / "streams" / "s"))
    store.close()
    path = _segment(tmp_path, segs[0])
    offsets = _offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[2]:] = b"\0" * (len(data) - offsets[2])  # a zeroed run to the end of the sealed segment
    path.write_bytes(bytes(data))
    fresh = EmbeddedStore(tmp_path)
    got = fresh.read("s", 0, max_count=100)
    assert [m.seq for m in got] == [0, 1, *range(segs[1], 60)]
    assert fresh.describe("s").lost_messages == segs[1] - 2


def test_torn_tail_with_nothing_after_is_still_truncated_without_a_gap(tmp_path: Path) -> None:
    _filled(tmp_path, 5).close()
    path = _segment(tmp_path, 0)
    with open(path, "ab") as f:  # a crash mid-write: header and part of the payload
        f.write(seg.encode_frame(5, 0, b"x" * 100)[:60])
    store = EmbeddedStore(tmp_path)
    assert store.append("s", b"after") == 5
    assert [m.seq for m in store.read("s", 0, max_count=100)] == list(range(6))
    assert store.describe("s").lost_messages == 0


def test_truncated_spec_json_is_a_clear_error_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path, 3).close()
    spec = tmp_path / "streams" / "s" / "spec.json"
    spec.write_bytes(spec.read_bytes()[:20])
    with pytest.raises(StreamError, match=r"spec\.json") as caught:
        EmbeddedStore(tmp_path).describe("s")
    assert "restart" in caught.value.fix
    assert main(["--store", str(tmp_path), "streams"]) == 1
    err = capsys.readouterr().err
    assert "spec.json" in err and "Fix:" in err and "validation error" not in err and "Traceback" not in err


def test_streams_command_shows_lost_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path, 10).close()
    path = _segment(tmp_path, 0)
    _flip(path, _offsets(path)[4] + seg.HEADER_SIZE + 2, 3)
    EmbeddedStore(tmp_path).read("s", 0, max_count=100)
    assert main(["--store", str(tmp_path), "--json", "streams"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["lost"] == 1 and row["corrupt_bytes"] > 0
    assert main(["--store", str(tmp_path), "streams"]) == 0
    assert "lost" in capsys.readouterr().out


# --- the sweep ----------------------------------------------------------------------------------------------------

N = 10  # frames in the damaged segment (their sizes add up to more than the smallest segment size)


def _baseline(root: Path, where: str) -> tuple[int, list[int], int]:
    """Build a stream whose damaged segment holds N frames; return (its first seq, frame offsets, total messages)."""
    if where == "newest":
        _filled(root, N).close()
        return 0, _offsets(_segment(root, 0)), N
    store = _filled(root, N, segment_size=sum(seg.HEADER_SIZE + len(_payload(i)) for i in range(N)))
    assert store.append("s", _payload(N)) == N  # opens the next segment: the first one is sealed
    assert store.append("s", _payload(N + 1)) == N + 1
    store.close()
    assert seg.list_segments(str(root / "streams" / "s")) == [0, N]
    return 0, _offsets(_segment(root, 0)), N + 2


def _cases(offsets: list[int]) -> list[tuple[int, int, int]]:
    """(frame, byte offset, bit) to flip: header bits of the sampled frames and some payload bits."""
    frames = range(N) if SOAK else sorted({0, N // 2, N - 1})
    out = []
    for k in frames:
        start, end = offsets[k], offsets[k + 1]
        for b in range(seg.HEADER_SIZE):  # make test: the lowest, the highest and one more bit of every header byte
            out += [(k, start + b, bit) for bit in (range(8) if SOAK else sorted({0, 7, (b * 3 + k) % 8}))]
        body = range(start + seg.HEADER_SIZE, end) if SOAK else [start + seg.HEADER_SIZE, (start + end) // 2, end - 1]
        out += [(k, b, bit) for b in body for bit in ((0, 7) if not SOAK else range(0, 8, 3))]
    return out


@pytest.mark.parametrize("where", ["newest", "sealed"])
def test_every_single_bit_flip_loses_exactly_the_damaged_message(tmp_path: Path, where: str) -> None:
    base = tmp_path / "base"
    first, offsets, total = _baseline(base, where)
    cases = _cases(offsets)
    for n, (k, offset, bit) in enumerate(cases):
        root = tmp_path / f"case{n}"
        shutil.copytree(base, root)
        _flip(_segment(root, first), offset, bit)
        store = EmbeddedStore(root)
        what = f"{where} segment, frame {k}, byte {offset - offsets[k]}, bit {bit}"
        try:
            new = [store.append("s", f"new-{i}".encode()) for i in range(3)]
            assert new == [total, total + 1, total + 2], f"{what}: sequence numbers reused or skipped: {new}"
            got = store.read("s", 0, max_count=1000)
            assert [m.seq for m in got] == [s for s in range(total + 3) if s != k], f"{what}: intact frames lost"
            assert all(m.payload == _payload(m.seq) for m in got if m.seq < total), f"{what}: wrong payload"
            past = store.read("s", k + 1, max_count=1000)
            assert [m.seq for m in past] == list(range(k + 1, total + 3)), f"{what}: read past the damage"
            info = store.describe("s")
            assert info.lost_messages == 1, f"{what}: lost {info.lost_messages}"
            assert info.corrupt_bytes == offsets[k + 1] - offsets[k], f"{what}: set aside {info.corrupt_bytes} bytes"
        finally:
            store.close()
        shutil.rmtree(root)


def test_reading_while_another_process_appends_finds_no_damage(tmp_path: Path) -> None:
    """Frames half-written by a live writer are waited for, never counted as damage (healthy operation is quiet)."""
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="live", segment_size_bytes=64 * 1024, flush_on_write=False))
    proc = subprocess.Popen([sys.executable, "-m", "tests.streams.writer_proc", str(tmp_path), "live", "w"],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL)
    try:
        seqs: list[int] = []
        deadline = time.monotonic() + 60
        while len(seqs) < 10_000 and time.monotonic() < deadline:
            got = store.read("live", len(seqs), max_count=50, timeout_s=1)
            assert [m.seq for m in got] == list(range(len(seqs), len(seqs) + len(got)))
            seqs += [m.seq for m in got]
    finally:
        proc.kill()
        proc.wait()
    assert len(seqs) >= 10_000
    assert store.corrupt_frames == 0 and store.describe("live").lost_messages == 0
    assert not list((tmp_path / "streams" / "live").glob("*.damaged-*"))
