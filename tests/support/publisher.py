"""A publisher run in this process: records to publish, the publisher over them, what a file destination wrote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.destinations.base import DestinationConfigBase, Route
from gateway.publisher import Publisher
from gateway.record import Record, make_record
from gateway.streams import PositionStore, RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

PUBLISHER = "factoryedge.Publisher"
ROUTE = Route(streams=["values"])


def fill_values(store: EmbeddedStore, n: int, *, per_batch: int = 50, tag: str = "line/temp") -> list[Record]:
    """Write ``n`` records (tags ``tag0`` .. ``tag6``, value ``i``) to the stream ``values``, ``per_batch`` each."""
    store.create_stream(StreamSpec(name="values"))
    writer = RecordWriter(store, "values")
    records = [make_record("plc", f"{tag}{i % 7}", float(i), seq=i, source_ts_ns=1_700_000_000_000_000_000 + i)
               for i in range(n)]
    for start in range(0, n, per_batch):
        writer.write(records[start : start + per_batch])
    return records


async def run_until(publisher: Publisher, done: Any, timeout: float = 30) -> None:
    """Run ``publisher`` until ``done()`` is true, then stop it; fail after ``timeout`` seconds or if it ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, "publisher did not deliver in time"
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)
    stop.set()
    await task


def make_publisher(store: EmbeddedStore, tmp: Path, sinks: dict[str, tuple[DestinationConfigBase, Any]]) -> Publisher:
    """A publisher over ``store`` with positions and status under ``tmp``, dead letters to ``dlq``."""
    return Publisher(store, PositionStore(tmp / "positions"), sinks, dead_letter_stream="dlq",
                     metrics_stream="metrics", status_dir=tmp / "status", status_interval_s=0.2)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a file destination wrote to ``path`` (none if it does not exist yet)."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
