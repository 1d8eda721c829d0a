"""A destination that prepares its requests (Kinesis) gets the next batch prepared in the pump's read thread while the
current one is in flight, and only when that cannot change what it sends: a batch with metadata records is sent by
``send`` at its turn and the batch after it prepared only once it was delivered (issue 18: aggregating a batch cost
~4 µs a record spent while nothing was in flight)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from gateway.destinations.base import Prepared, SendResult
from gateway.destinations.file import FileConfig
from gateway.destinations.kinesis import KinesisConfig, KinesisDestination
from gateway.errors import DestinationError
from gateway.record import Kind, Quality, Record, make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore
from tests.support.publisher import ROUTE, make_publisher, run_until

PER_MESSAGE = 10
BATCH_MESSAGES = 2


def _fill(store: EmbeddedStore, batches: int, meta_in: set[int]) -> list[Record]:
    """``batches`` publisher batches of values; those in ``meta_in`` start with a META record."""
    store.create_stream(StreamSpec(name="values"))
    writer = RecordWriter(store, "values")
    out = []
    for b in range(batches):
        for m in range(BATCH_MESSAGES):
            seq = (b * BATCH_MESSAGES + m) * PER_MESSAGE
            message = [make_record("plc", f"t{i % 3}", float(seq + i), seq=seq + i, source_ts_ns=10**18 + seq + i)
                       for i in range(PER_MESSAGE)]
            if b in meta_in and m == 0:
                message[0] = make_record("plc", "t0", {"unit": "bar"}, seq=seq, kind=Kind.META)
            writer.write(message)
            out += message
    return out


class _Preparing:
    """Notes, for each batch, whether the next one was prepared while it was in flight (waits up to 2 s for it)."""

    def __init__(self) -> None:
        self.name = "p"
        self.sent: list[Record] = []
        self.prepared: list[int] = []  # the first seq of each batch prepare built
        self.ahead: list[bool] = []  # per prepared send: was the next batch prepared meanwhile
        self.by_send = 0
        self.changed = threading.Condition()

    async def start(self) -> None:
        pass

    async def close(self, timeout_s: float) -> None:
        pass

    def prepare(self, records: list[Record]) -> Prepared | None:
        with self.changed:
            self.prepared.append(records[0].seq)
            self.changed.notify_all()
        if any(r.kind == Kind.META for r in records):
            return None

        async def send() -> SendResult:
            following = records[-1].seq + 1

            def wait_for_next() -> bool:
                with self.changed:
                    return self.changed.wait_for(lambda: following in self.prepared, timeout=2)

            self.ahead.append(await asyncio.to_thread(wait_for_next))
            self.sent += records
            return SendResult()

        return send

    async def send(self, records: list[Record]) -> SendResult:
        self.by_send += 1
        self.sent += records
        return SendResult()


def test_the_next_batch_is_prepared_while_one_is_in_flight(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    records = _fill(store, 6, meta_in={3})
    sink = _Preparing()
    cfg = FileConfig(name="p", path=str(tmp_path / "unused"), route=ROUTE, batch_messages=BATCH_MESSAGES)
    pub = make_publisher(store, tmp_path, {"p": (cfg, sink)})
    asyncio.run(run_until(pub, lambda: len(sink.sent) >= len(records)))
    assert [r.id for r in sink.sent] == [r.id for r in records]
    batch = BATCH_MESSAGES * PER_MESSAGE
    # every batch prepared once, in order; batch 3 (metadata) declined and sent by send
    assert sink.prepared == [b * batch for b in range(6)]
    assert sink.by_send == 1
    # batches 0 and 1 had the next one prepared meanwhile; batch 2 too (batch 3 was tried and declined); batch 4
    # was prepared only after batch 3 was delivered, and 4 had 5 prepared meanwhile; 5 is the last
    assert sink.ahead == [True, True, True, True, False], "the next batch was not prepared while one was in flight"


class _Recorded(KinesisDestination):
    """A Kinesis destination whose PutRecords calls are noted instead of made; ``fail`` keys get an error code."""

    def __init__(self, cfg: KinesisConfig, fail: set[str] | None = None) -> None:
        super().__init__(cfg)
        self._client = object()
        self.calls: list[list[tuple[str, bytes]]] = []
        self.fail = fail or set()

    def _put(self, call: list[tuple[str, tuple[bytes, list[Record]]]]) -> list[str]:
        self.calls.append([(key, data) for key, (data, _) in call])
        return ["ProvisionedThroughputExceededException" if key in self.fail else "" for key, _ in call]


def _kinesis_cfg() -> KinesisConfig:
    return KinesisConfig(name="k", stream_name="s", aws={"region": "us-east-1"}, records_per_kinesis_record=4)


def _values(n: int, meta: bool = False) -> list[Record]:
    out = [Record("plc", f"t{i % 3}", float(i), Quality.GOOD, 10**18 + i, 10**18, i) for i in range(n)]
    if meta:
        out.insert(2, Record("plc", "t1", {"unit": "bar"}, Quality.GOOD, 10**18, 10**18, 99, Kind.META))
    return out


def test_kinesis_prepared_send_makes_the_calls_send_makes() -> None:
    first, second = _values(5, meta=True), _values(30)
    by_send = _Recorded(_kinesis_cfg())
    for batch in (first, second):
        asyncio.run(by_send.send(batch))
    prepared = _Recorded(_kinesis_cfg())
    assert prepared.prepare(first) is None  # its metadata changes the headers of what follows: sent at its turn
    asyncio.run(prepared.send(first))
    ready = prepared.prepare(second)
    assert ready is not None
    result = asyncio.run(ready())
    assert not result.retry and not result.rejected
    assert prepared.calls == by_send.calls
    assert b'"meta":[{"source":"plc","tag":"t1","meta":{"unit":"bar"}}]' in prepared.calls[-1][1][1]


def test_kinesis_prepared_send_resends_a_partial_failure_as_send_does() -> None:
    records = _values(30)
    results = []
    for use_prepare in (False, True):
        sink = _Recorded(_kinesis_cfg(), fail={"t2"})
        ready = sink.prepare(records) if use_prepare else None
        result = asyncio.run(ready() if ready is not None else sink.send(records))
        results.append((sink.calls, [r.seq for r in result.retry], result.retry_reason))
    assert results[0] == results[1]
    assert results[0][1] == [r.seq for r in records if r.tag == "t2"]


def test_kinesis_prepared_send_raises_what_send_raises() -> None:
    class _Down(_Recorded):
        def _put(self, call: Any) -> list[str]:
            raise DestinationError("kinesis destination k: ResourceNotFoundException", fix="create it",
                                   retryable=True)

    sink = _Down(_kinesis_cfg())
    ready = sink.prepare(_values(3))
    assert ready is not None
    try:
        asyncio.run(ready())
    except DestinationError as exc:
        assert exc.retryable
    else:
        raise AssertionError("the prepared send did not raise")
