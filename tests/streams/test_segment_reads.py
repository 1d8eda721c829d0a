"""How much a scan of a segment reads: about what it returns, not a whole chunk (issue 18), and the same frames
whatever the sizes of the messages around the ones asked for."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.streams import segments as seg


def _segment(path: Path, payloads: list[bytes]) -> int:
    with open(path, "wb") as f:
        for seq, payload in enumerate(payloads):
            f.write(seg.encode_frame(seq, 1_700_000_000_000 + seq, payload))
    return path.stat().st_size


def _frames(fd: int, offset: int, size: int, expected: int, limit: int) -> Iterator[seg.Frame]:
    for item in seg.scan(fd, offset, size, expected, limit):
        assert isinstance(item, seg.Frame), item
        yield item


@pytest.fixture
def preads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes the segment module asks os.pread for."""
    asked: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        asked.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)  # the module calls os.pread through the os module
    return asked


def test_a_poll_of_100_alike_messages_reads_about_100_messages(tmp_path: Path, preads: list[int]) -> None:
    payloads = [random.Random(i).randbytes(5_000) for i in range(300)]  # a 1.5 MiB segment of 5 KB batches
    size = _segment(tmp_path / "s.seg", payloads)
    fd = os.open(tmp_path / "s.seg", os.O_RDONLY)
    try:
        got = list(_frames(fd, 0, size, 0, 100))
    finally:
        os.close(fd)
    assert [f.payload for f in got] == payloads[:100]
    frame = seg.HEADER_SIZE + 5_000
    assert sum(preads) <= 100 * frame + 2 * seg.HEADER_SIZE  # was a whole 1 MiB chunk: twice what was returned
    assert len(preads) <= 2


@pytest.mark.parametrize("seed", range(20))
def test_messages_of_any_sizes_read_in_polls_are_every_frame_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 27, 28, 29, 500, 5_000, 60_000, 400_000, rng.randrange(1, 1_200_000)])
             for _ in range(rng.randrange(1, 60))]
    payloads = [rng.randbytes(n) for n in sizes]
    size = _segment(tmp_path / "s.seg", payloads)
    fd = os.open(tmp_path / "s.seg", os.O_RDONLY)
    try:
        got: list[bytes] = []
        offset, expected = 0, 0
        while offset < size:
            batch = list(_frames(fd, offset, size, expected, rng.choice([1, 2, 3, 10, 100])))
            assert batch, f"no progress at offset {offset}"
            got += [f.payload for f in batch]
            offset, expected = batch[-1].end, batch[-1].next_seq
    finally:
        os.close(fd)
    assert got == payloads
