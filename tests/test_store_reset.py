"""A stream store reset (stream manager's store folder changed, its work folder wiped, a stream deleted and created
again) restarts streams at sequence 0: the publisher notices, logs it once and sends the new stream from its oldest
record instead of waiting at its old position with a backlog of 0 (issue 14 item 4)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.destinations.file import FileConfig, FileDestination
from gateway.record import make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import ROUTE, fill_values, make_publisher, read_jsonl


def test_publisher_resumes_from_the_oldest_record_after_the_stream_restarts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(tmp_path / "store")
    fill_values(store, 500)
    out = tmp_path / "out.jsonl"
    cfg = FileConfig(name="f", path=str(out), route=ROUTE)
    pub = make_publisher(store, tmp_path, {"f": (cfg, FileDestination(cfg))})
    fresh = [make_record("plc", "line/after", float(i), seq=i) for i in range(20)]

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        loop = asyncio.get_running_loop()

        async def until(what: str, done: object, timeout: float = 20) -> None:
            deadline = loop.time() + timeout
            while not done():  # type: ignore[operator]
                assert loop.time() < deadline, f"timed out waiting for {what}"
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)

        try:
            await until("the first 500 records", lambda: len(read_jsonl(out)) >= 500)
            store.delete_stream("values")  # the store was reset: the stream starts again at seq 0
            store.create_stream(StreamSpec(name="values"))
            RecordWriter(store, "values").write(fresh)
            await until("the records written after the reset", lambda: len(read_jsonl(out)) >= 520)
        finally:
            stop.set()
            await task

    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        asyncio.run(body())
    assert [r["id"] for r in read_jsonl(out)[500:]] == [r.id for r in fresh]
    resets = [m for m in caplog.messages if "restarted at seq" in m]
    assert len(resets) == 1, caplog.messages  # logged once, not once per poll
    assert pub.counters["f"].store_resets == 1
