"""File destination: a write cut short (a full disk, a file size limit) leaves no partial line behind.

Found by the soak (`make soak`, disk-full phase): a batch that hit ENOSPC half-way left its first bytes in the file;
the retried batch was appended right after them, so the fragment and the retried batch's first record became one
line no JSON-lines reader can parse, and that record was lost to every consumer of the file.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
from pathlib import Path

import pytest

from gateway.destinations.file import FileConfig, FileDestination
from gateway.errors import DestinationError
from gateway.record import make_record


def test_a_write_cut_short_is_undone_so_the_retry_leaves_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileDestination(FileConfig(name="f", path=str(path), fsync=False))
    records = [make_record("plc", "Line1/Counter", i, seq=i) for i in range(40)]
    # A file size limit cuts a write short exactly as a full disk does: the bytes up to the limit are written, then
    # the call fails (EFBIG rather than ENOSPC once SIGXFSZ is ignored).
    old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)

    async def scenario() -> None:
        await sink.start()
        await sink.send(records[:10])
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, old_limit[1]))
        try:
            with pytest.raises(DestinationError):
                await sink.send(records[10:])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        await sink.send(records[10:])  # the publisher's retry of the same batch
        await sink.close(5.0)

    try:
        asyncio.run(scenario())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_signal)
    lines = path.read_bytes().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line a whole record
    assert [r["id"] for r in parsed] == [r.id for r in records]
