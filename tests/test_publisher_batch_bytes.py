"""A destination's batches are bounded by ``batch_bytes`` as well as ``batch_messages``: the publisher's memory stays
bounded when messages are large, and no record is lost or sent twice at the bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.destinations.base import SendResult
from gateway.destinations.file import FileConfig
from gateway.record import Record
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import ROUTE, fill_values, make_publisher, run_until

PER_MESSAGE = 200


class _Sink:
    """Accepts everything and keeps each send's records."""

    name = "s"

    def __init__(self) -> None:
        self.sends: list[list[Record]] = []

    async def start(self) -> None:
        pass

    async def close(self, timeout_s: float) -> None:
        pass

    async def send(self, records: list[Record]) -> SendResult:
        self.sends.append(list(records))
        return SendResult()


def _run(tmp_path: Path, total: int, **batch: int) -> tuple[list[list[Record]], list[Record], int]:
    store = EmbeddedStore(tmp_path / "store")
    written = fill_values(store, total, per_batch=PER_MESSAGE)
    message_bytes = len(store.read("values", 0, max_count=1)[0].payload)
    cfg = FileConfig(name="s", path=str(tmp_path / "out.jsonl"), route=ROUTE, **batch)
    sink = _Sink()
    publisher = make_publisher(store, tmp_path, {"s": (cfg, sink)})
    asyncio.run(run_until(publisher, lambda: sum(map(len, sink.sends)) >= total))
    return sink.sends, written, message_bytes


def test_batches_hold_only_the_messages_that_fit_in_batch_bytes(tmp_path: Path) -> None:
    probe = EmbeddedStore(tmp_path / "probe")
    fill_values(probe, PER_MESSAGE, per_batch=PER_MESSAGE)
    size = len(probe.read("values", 0, max_count=1)[0].payload)
    sends, written, message_bytes = _run(tmp_path, 40 * PER_MESSAGE, batch_messages=100,
                                         batch_bytes=int(2.5 * size))
    assert message_bytes == size
    assert max(map(len, sends)) == 2 * PER_MESSAGE  # two messages fit, the third did not
    assert [r.id for s in sends for r in s] == [r.id for r in written]  # each record once, in order


def test_a_message_larger_than_batch_bytes_still_goes_alone(tmp_path: Path) -> None:
    sends, written, message_bytes = _run(tmp_path, 5 * PER_MESSAGE, batch_messages=100, batch_bytes=1024)
    assert message_bytes > 1024
    assert [len(s) for s in sends] == [PER_MESSAGE] * 5
    assert [r.id for s in sends for r in s] == [r.id for r in written]
