"""The append path writes the frame format of ``segments.py`` byte for byte (issue 18 changed how a frame is built
and written: a header and the payload in one ``writev`` instead of one concatenated copy; the bytes must not change,
or stores written before would not read)."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

from gateway.streams import StreamSpec
from gateway.streams import segments as seg
from gateway.streams.embedded import EmbeddedStore


def _reference_frame(seq: int, ts_ms: int, payload: bytes) -> bytes:
    """The format as documented: u32 length | u32 crc32(seq, time, payload) | u64 seq | u64 time | payload."""
    seq_ts = struct.pack(">QQ", seq, ts_ms)
    return struct.pack(">II", len(payload), zlib.crc32(seq_ts + payload)) + seq_ts + payload


def test_frame_header_and_payload_are_the_documented_frame() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        seq, ts = rng.randrange(1 << 64), rng.randrange(1 << 64)
        payload = rng.randbytes(rng.choice([0, 1, 23, 24, 25, rng.randrange(70_000)]))
        header = seg.frame_header(seq, ts, payload)
        assert header + payload == _reference_frame(seq, ts, payload)
        assert seg.encode_frame(seq, ts, payload) == _reference_frame(seq, ts, payload)


def test_segments_hold_exactly_the_reference_frames_of_the_appends(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = EmbeddedStore(tmp_path)
    store.create_stream(StreamSpec(name="s", segment_size_bytes=64 * 1024, flush_on_write=True))
    payloads = [rng.randbytes(rng.randrange(20_000)) for _ in range(60)]
    assert [store.append("s", p) for p in payloads] == list(range(60))
    stored = store.read("s", 0, max_count=100)
    assert [m.payload for m in stored] == payloads
    folder = tmp_path / "streams" / "s"
    expected: dict[int, bytes] = {}
    firsts = seg.list_segments(str(folder))
    assert len(firsts) > 1  # the appends rotated
    for m in stored:
        first = max(f for f in firsts if f <= m.seq)
        expected[first] = expected.get(first, b"") + _reference_frame(m.seq, m.ts_ms, m.payload)
    for first in firsts:
        assert (folder / seg.segment_name(first)).read_bytes() == expected[first]
        assert os.path.getsize(folder / seg.segment_name(first)) == len(expected[first])
    store.close()
