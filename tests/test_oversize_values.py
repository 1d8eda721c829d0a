"""One oversized value stalls nothing (issue 13 item 6): a 9 MB OPC UA string makes that one record BAD (counted,
logged once) while the other tags of its connection keep flowing; stream messages are split by encoded size."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from asyncua import Node, Server, ua

from devkit.peers import free_port
from gateway.codec import decode_batch
from gateway.collector import Collector
from gateway.record import MAX_VALUE_BYTES, Quality, Record, make_record
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec
from gateway.streams.batches import MESSAGE_BYTES
from gateway.streams.embedded import EmbeddedStore

URI = "urn:factoryedge:oversize"
BIG = 9 * 1024 * 1024


async def _server(port: int) -> tuple[Server, dict[str, Node]]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(URI)
    obj = await server.nodes.objects.add_object(idx, "Plant")
    nodes = {
        name: await obj.add_variable(f"ns={idx};s={name}", name, initial)
        for name, initial in (("Big", "x" * BIG), ("Flow", 0.0), ("Level", 0.0))
    }
    await server.start()
    return server, nodes


def test_a_9_mb_string_is_one_bad_record_and_the_other_tags_keep_flowing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    cfg = OpcUaConnection(name="plant", endpoint=f"opc.tcp://127.0.0.1:{port}", namespace_uri=URI,
                          nodes=["s=Big", "s=Flow", "s=Level"], publishing_interval_ms=50,
                          reconnect_min_s=0.1, reconnect_max_s=0.5, timeout_s=10, keepalive_s=5,
                          flush_interval_s=0.05, security={"mode": "None", "policy": "None"})

    async def scenario() -> dict[str, object]:
        server, nodes = await _server(port)
        store = EmbeddedStore(tmp_path / "store")
        col = Collector("test", store, StreamSpec(name="opcua"), OpcUaSource)
        stop = asyncio.Event()
        task = asyncio.create_task(col.run([cfg], stop))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            for i in range(1, 1_000_000):
                await nodes["Flow"].write_value(float(i))
                await nodes["Level"].write_value(float(-i))
                if i % 10 == 0:  # another huge value now and then: still one log line
                    await nodes["Big"].write_value("y" * BIG + str(i))
                await asyncio.sleep(0.05)
                conn = col.connections.get("plant")
                if conn is not None and conn.counters.values_written >= 60 and i >= 30:
                    break
                assert loop.time() < deadline, f"the other tags did not flow: {col.status()}"
                assert not task.done(), task.exception()
            assert conn is not None
            return dict(conn.counters.as_dict())
        finally:
            stop.set()
            await task
            store.close()
            await server.stop()

    counters = asyncio.run(scenario())
    reader = RecordReader(EmbeddedStore(tmp_path / "store"), "opcua", "t", PositionStore(tmp_path / "pos"))
    recs = reader.poll(max_messages=100_000, timeout_s=0).records
    flow = [r for r in recs if r.tag == "Flow" and r.quality == Quality.GOOD]
    big = [r for r in recs if r.tag == "Big"]
    assert len(flow) >= 20
    assert big and all(r.quality == Quality.BAD and r.value is None for r in big), big[:3]
    assert counters["extra"]["oversize_values_read"] >= 2  # type: ignore[index]
    lines = [m for m in caplog.messages if "Big" in m and str(MAX_VALUE_BYTES) in m]
    assert len(lines) == 1, lines


def _rec(i: int, value: object) -> Record:
    return Record("src", f"t{i}", value, Quality.GOOD, 1_700_000_000_000_000_000 + i,  # type: ignore[arg-type]
                  1_700_000_000_000_000_000 + i, i)


def test_stream_messages_are_split_by_encoded_size(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    store.create_stream(StreamSpec(name="s"))
    writer = RecordWriter(store, "s")
    # 40 values of 700 KB: 28 MB in one batch of fewer than MAX_RECORDS_PER_MESSAGE records
    records = [_rec(i, chr(65 + i % 26) * 700_000) for i in range(40)]
    writer.write(records)
    messages = store.read("s", 0, max_count=1000)
    assert all(len(m.payload) <= MESSAGE_BYTES for m in messages)
    back = [r for m in messages for r in decode_batch(m.payload)]
    assert back == records  # all of them, in order
    assert writer.records_written == 40 and writer.messages_written == len(messages)
    store.close()


def test_a_record_made_with_an_oversized_string_is_bad_with_no_value() -> None:
    r = make_record("src", "t", "x" * (MAX_VALUE_BYTES + 1), seq=1)
    assert r.quality == Quality.BAD and r.value is None
    multibyte = "é" * (MAX_VALUE_BYTES // 2 + 1)  # fewer characters than the cap, more bytes
    assert make_record("src", "t", multibyte, seq=2).value is None
    assert make_record("src", "t", "x" * 1000, seq=3).value == "x" * 1000


def test_every_protocol_gets_the_cap_from_the_emitter(caplog: pytest.LogCaptureFixture) -> None:
    """OPC DA and Modbus values go through the same Emitter: an over-large string is BAD alone, counted, logged once."""
    from gateway.sources.common import Counters, Emitter
    from gateway.sources.opcda_config import OpcDaConnection

    cfg = OpcDaConnection(name="da", host="127.0.0.1", server="S", items=["big", "small"], allow_plaintext=True)
    counters = Counters()
    emitter = Emitter(cfg, counters)
    huge = "x" * (MAX_VALUE_BYTES + 1)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            emitter.emit("big", huge, Quality.GOOD, 1)
            emitter.emit("small", "ok", Quality.GOOD, 1)
    by_tag = {r.tag: r for r in emitter.pending}
    assert by_tag["big"].quality == Quality.BAD and by_tag["big"].value is None
    assert by_tag["small"].quality == Quality.GOOD and by_tag["small"].value == "ok"
    assert counters.extra["oversize_values_read"] == 2
    assert sum("sent a value of" in r.getMessage() for r in caplog.records) == 1
