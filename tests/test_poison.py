"""Poison messages (issue 13 item 5): a CRC-valid stream message that is not a valid record batch is skipped, counted
and dead-lettered by every reader; it never crashes, wedges or silently stops one.

The corpus is tests/cases/poison/*.bin (written by make.py beside it): infinite and float timestamps, CBOR semantic
tags (regex, datetime, decimal, UUID, set), values of other types, out-of-range indexes, truncated or nested CBOR.
Each reader gets a stream of good batches with every poison message between them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import ROOT
from gateway.anomaly.engine import Engine
from gateway.codec import decode_batch
from gateway.componentconfig import AnomalyDetectorConfig
from gateway.destinations.base import Route
from gateway.destinations.file import FileConfig, FileDestination
from gateway.errors import CodecError
from gateway.publisher import Publisher
from gateway.record import Record, make_record
from gateway.streams import PositionStore, RecordReader, RecordWriter, StreamSpec, open_store
from gateway.streams.embedded import EmbeddedStore
from tests.support.anomaly import NS, T0, TAGS, group

CORPUS = sorted((ROOT / "tests" / "cases" / "poison").glob("*.bin"))
STREAM = "factoryedge-opcua"


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_poison_message_is_a_codec_error(path: Path) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(path.read_bytes())
    assert "Fix:" in str(err.value)


def _poisoned_stream(folder: Path) -> tuple[EmbeddedStore, list[Record], list[bytes]]:
    """Good batches of the anomaly group's tags, one second apart, with every poison message between them."""
    store = EmbeddedStore(folder)
    store.create_stream(StreamSpec(name=STREAM))
    writer = RecordWriter(store, STREAM)
    good: list[Record] = []
    poison = [p.read_bytes() for p in CORPUS]
    for k in range(len(poison) + 1):
        batch = [make_record("plc", tag, float(k % 5 + i), seq=k * 10 + i, source_ts_ns=T0 + k * NS)
                 for i, tag in enumerate(TAGS)]
        writer.write(batch)
        good += batch
        if k < len(poison):
            store.append(STREAM, poison[k])
    return store, good, poison


def test_the_record_reader_skips_counts_and_hands_over_each_poison_message(tmp_path: Path) -> None:
    store, good, poison = _poisoned_stream(tmp_path / "data")
    reader = RecordReader(store, STREAM, "r", PositionStore(tmp_path / "positions"))
    got: list[Record] = []
    handed: list[bytes] = []
    while batch := reader.poll(max_messages=7, timeout_s=0):
        if not batch.messages:
            break
        got += batch.records
        handed += [payload for _, payload, _ in batch.poison]
    assert got == good
    assert handed == poison
    assert reader.corrupt_messages_read == len(poison)


async def _publish(pub: Publisher, done: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not done():
        assert loop.time() < deadline, "the publisher did not get through the poisoned stream"
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)
    stop.set()
    await task


def test_the_publisher_dead_letters_poison_and_delivers_everything_else(tmp_path: Path) -> None:
    store, good, poison = _poisoned_stream(tmp_path / "data")
    out = tmp_path / "out.jsonl"
    cfg = FileConfig(name="f", path=str(out), route=Route(streams=[STREAM]))
    pub = Publisher(store, PositionStore(tmp_path / "positions"), {"f": (cfg, FileDestination(cfg))},
                    dead_letter_stream="dlq", metrics_stream="metrics", status_dir=tmp_path / "status",
                    status_interval_s=0.2)
    end = store.describe(STREAM).next_seq
    asyncio.run(_publish(pub, lambda: PositionStore(tmp_path / "positions").get("f", STREAM) == end))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r.id for r in good]
    lettered = [r for m in store.read("dlq", 0, max_count=10_000) for r in decode_batch(m.payload)]
    assert [base64.b64decode(str(r.value)) for r in lettered] == poison  # the bytes are kept for examination
    status = json.loads((tmp_path / "status" / "factoryedge.Publisher.json").read_text())
    assert status["destinations"]["f"]["records_dead_lettered"] == len(poison)


def test_the_anomaly_engine_scores_around_poison(tmp_path: Path) -> None:
    _poisoned_stream(tmp_path / "data")
    cfg = AnomalyDetectorConfig.model_validate({
        "store": {"kind": "embedded", "path": str(tmp_path / "data")}, "model_dir": str(tmp_path / "model"),
        "input_streams": [STREAM], "start_from": "oldest", "groups": [group().model_dump()]})
    store, positions = open_store(cfg.store)
    engine = Engine(cfg, store, positions)
    engine.open()
    messages = 0
    while (out := engine.step()).messages:
        messages += out.messages
    assert messages == store.describe(STREAM).next_seq
    assert engine.counters["records_read"] == (len(CORPUS) + 1) * len(TAGS)
    engine.close()


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_tail_and_replay_go_on_past_poison(tmp_path: Path) -> None:
    store, good, poison = _poisoned_stream(tmp_path / "data")
    store.close()
    data = str(tmp_path / "data")
    for extra in ([], ["--json"]):
        tail = _ctl("--store", data, *extra, "tail", STREAM, "--messages", "1000")
        assert tail.returncode == 0, tail.stderr
        assert len(tail.stdout.splitlines()) == len(good)
        assert tail.stderr.count("cannot decode") == len(poison)
    config = tmp_path / "publisher.yaml"
    config.write_text(yaml.safe_dump({"store": {"kind": "embedded", "path": data}, "destinations": [
        {"type": "file", "name": "again", "path": str(tmp_path / "again.jsonl")}]}))
    replay = _ctl("--store", data, "--config", str(config), "--json", "replay", STREAM, "--from", "0",
                  "--destination", "again")
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout.splitlines()[-1])["done"]
    assert summary["records_sent"] == len(good) and summary["messages_corrupt"] == len(poison)
