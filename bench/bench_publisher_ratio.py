"""The publisher against the bare client libraries on the same peers and the same payloads (issue 18).

One backlog of ``RECORDS`` records (stream messages of 100 tags, the shape a collector writes) is written once; each
"ours" run drains a copy of it with the real component process (``components/publisher/main.py``) and one
destination, timed as ``bench_publisher`` does: from the destination's first committed position to its last, so a
record counts once it was acknowledged and its position was made durable. Each "bare" run sends exactly the bytes
our destination produces for the same records (built before timing, with the destination's own packing and the
publisher's batch size), from this process:

- MQTT: paho-mqtt publishes each batch's messages with QoS 1 to the same mosquitto, over the same mutual TLS, with
  the same in-flight window (1,000) and the same socket settings as our destination (TCP_NODELAY, TCP_QUICKACK
  after each PUBACK), and waits for the batch's PUBACKs before the next batch, as the destination does; timed from
  the first publish to the last PUBACK. With paho's own socket defaults instead (the reference issue 18 measured,
  196k records/s there) mosquitto's Nagle and our delayed ACK stall each batch ~40 ms: reported as
  ``publisher.mqtt.paho_defaults_records_per_s`` and ``publisher.mqtt.ratio_vs_paho_defaults``;
- Kinesis: boto3 ``put_records`` with exactly the entries (data, partition key) and the calls our destination
  makes, one call after the other, to the same kinesalite (a fresh 2-shard stream each run), with the client
  setting of our destination that changes the work per call (no client-side parameter validation).

Ours and bare run interleaved, ``PAIRS`` pairs per destination, so that the machine's load moves both. Figures:

- ``publisher.mqtt.ratio_vs_paho`` / ``publisher.kinesis.ratio_vs_boto3``: the median over the pairs of ours ÷ bare
  records per second, as issue 18's table measured them (targets >= 0.5 and >= 0.7). Neither bare client saturates
  a core here (``*.bare_cpu_share`` 0.3-0.8: the peer is the limit), so the issue's other definition, bare ÷ ours
  CPU per record, is reported beside it as ``cpu_ratio_vs_<lib>``;
- ``publisher.<dest>.paired_records_per_s`` and ``publisher.mqtt.paho_records_per_s`` /
  ``publisher.kinesis.boto3_records_per_s``: the medians of the absolute rates;
- ``publisher.<dest>.cpu_us_per_record`` (the publisher process: all its threads, process start excluded) and
  ``publisher.mqtt.paho_cpu_us_per_record`` / ``publisher.kinesis.boto3_cpu_us_per_record`` (this process while
  it sends), medians; ``publisher.<dest>.cpu_ratio_vs_<lib>`` is bare ÷ ours CPU per record (median of pairs);
- ``publisher.<dest>.bare_cpu_share``: the bare run's CPU time ÷ its wall time (1.0 = one core saturated);
- ``publisher.mqtt.floor_us_per_record``: the least CPU per record any Python destination spends before paho gets
  the bytes (decode the stream message, the id, one JSON text: bench/mqtt_floor.py), and
  ``publisher.mqtt.cpu_ratio_vs_paho_at_floor``: paho's CPU per record ÷ (paho's + that floor), the highest CPU
  ratio reachable on this stream format and payload.

Peers, publisher and this script share the machine's cores. Run ``python bench/bench_publisher_ratio.py``;
``--only kinesis`` (or ``--only mqtt``) runs one destination's pairs and prints only its figures.
"""

from __future__ import annotations

import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_publisher import STREAM, _backlog, _destinations, _publisher  # noqa: E402
from bench.mqtt_floor import floor_us_per_record  # noqa: E402
from devkit.kinesis_peer import TEST_CREDENTIALS, create_stream, start_kinesalite  # noqa: E402
from devkit.peers import Proc, start_mosquitto  # noqa: E402
from gateway.destinations.kinesis import KinesisConfig, _calls  # noqa: E402
from gateway.destinations.mqtt import MqttConfig, _ack_at_once, _no_delay  # noqa: E402
from gateway.record import Record  # noqa: E402
from gateway.streams import PositionStore, RecordReader  # noqa: E402
from gateway.streams.embedded import EmbeddedStore  # noqa: E402

RECORDS = 200_000
PAIRS = 3
INFLIGHT = 1000  # the MQTT destination's in-flight window


def _batches(data: Path, batch_messages: int) -> list[list[Record]]:
    """The backlog's records as the publisher reads them: one list per poll of ``batch_messages`` messages."""
    store = EmbeddedStore(data)
    try:
        reader = RecordReader(store, STREAM, "bare", PositionStore(data.parent / "bare-positions", sync=False))
        out = []
        while batch := reader.poll(max_messages=batch_messages, timeout_s=0).records:
            out.append(batch)
        return out
    finally:
        store.close()


def _payloads(data: Path) -> list[bytes]:
    """The backlog's stream messages as stored (for bench/mqtt_floor.py)."""
    store = EmbeddedStore(data)
    try:
        out: list[bytes] = []
        while got := store.read(STREAM, len(out), max_count=1000):
            out += [m.payload for m in got]
        return out
    finally:
        store.close()


def _ours(root: Path, backlog: Path, dest: dict[str, Any], run: str) -> tuple[float, float]:
    """(records/s, CPU µs per record) of the component process draining a copy of the backlog."""
    folder = root / run
    shutil.copytree(backlog, folder / "data")
    store = EmbeddedStore(folder / "data")
    end = store.describe(STREAM).next_seq
    store.close()
    proc = _publisher(folder, [dest])
    try:
        return _drain(folder, dest["name"], end, proc)
    finally:
        proc.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _drain(folder: Path, name: str, end: int, proc: Proc) -> tuple[float, float]:
    positions = PositionStore(folder / "data" / "positions")
    process = psutil.Process(proc.pid)
    first: tuple[float, int, float, float] | None = None  # time, position, CPU, of it kernel
    deadline = time.monotonic() + 300
    while True:
        pos = positions.get(name, STREAM) or 0
        now = time.monotonic()
        if first is None and pos > 0:
            cpu = process.cpu_times()
            first = (now, pos, cpu.user + cpu.system, cpu.system)
        if pos >= end:
            cpu = process.cpu_times()
            break
        if now > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"{name} did not drain (position {pos}/{end}): {proc.output()[-2000:]}")
        time.sleep(0.02)  # polling a file position for a measurement, not synchronisation
    assert first is not None
    records = (end - first[1]) * 100  # messages of 100 records
    rate, cpu_us = records / max(now - first[0], 1e-6), (cpu.user + cpu.system - first[2]) * 1e6 / records
    kernel_us = (cpu.system - first[3]) * 1e6 / records  # fsyncs, reads, sockets: not seen by a Python profiler
    _say(f"ours {name}: {rate:.0f} records/s, {cpu_us:.2f} µs CPU per record (of it in the kernel {kernel_us:.2f})")
    return rate, cpu_us


def _say(line: str) -> None:
    print(f"  {line} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)


def _mqtt_messages(cfg: MqttConfig, batches: list[list[Record]]) -> list[list[tuple[str, bytes]]]:
    """The (topic, payload) messages our destination publishes for each batch."""
    sink = cfg.build()
    try:
        return [sink.messages(batch)[0] for batch in batches]
    finally:
        sink._shutdown()


def _bare_paho(mosq: Any, batches: list[list[tuple[str, bytes]]], records: int, tuned: bool
               ) -> tuple[float, float, float]:
    """(records/s, CPU µs per record, CPU share) of paho publishing each batch's messages with QoS 1 over mutual TLS
    and waiting for their PUBACKs before the next batch, as the destination does. ``tuned``: the socket settings
    our destination makes (TCP_NODELAY, TCP_QUICKACK after each PUBACK); else paho's defaults."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = ssl.create_default_context(cafile=str(mosq.pki.ca))
    ctx.load_cert_chain(str(mosq.pki.client_cert), str(mosq.pki.client_key))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=True)
    client.tls_set_context(ctx)
    client.max_inflight_messages_set(INFLIGHT)
    if tuned:
        client.on_socket_open = _no_delay  # the destination's own callbacks: the very same settings
        client.on_publish = _ack_at_once
    client.connect("127.0.0.1", mosq.tls_port)
    client.loop_start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            infos = [client.publish(topic, payload, qos=1) for topic, payload in batch]
            for info in infos:
                info.wait_for_publish(60)
                if not info.is_published():
                    raise RuntimeError("bare paho: no PUBACK within 60 s")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        client.disconnect()
        client.loop_stop()
    _say(f"paho{'' if tuned else ' (defaults)'}: {records / wall:.0f} records/s, {cpu * 1e6 / records:.2f} µs CPU "
         f"per record, {cpu / wall:.2f} core")
    return records / wall, cpu * 1e6 / records, cpu / wall


def _kinesis_calls(cfg: KinesisConfig, batches: list[list[Record]]) -> list[list[dict[str, Any]]]:
    """The PutRecords entries our destination sends for ``batches`` when every call succeeds, call by call."""
    sink = cfg.build()
    out = []
    for batch in batches:
        queues, _ = sink.aggregates(batch)
        while queues:  # one round: the head aggregate of every key, as KinesisDestination.send does
            heads = [(key, q.pop(0)) for key, q in queues.items()]
            queues = {k: q for k, q in queues.items() if q}
            out += [[{"Data": data, "PartitionKey": key} for key, (data, _) in call] for call in _calls(heads)]
    return out


def _bare_boto3(endpoint: str, stream: str, calls: list[list[dict[str, Any]]], records: int
                ) -> tuple[float, float, float]:
    """(records/s, CPU µs per record, CPU share) of boto3 sending ``calls`` one after the other."""
    import boto3
    import botocore.config

    # The client settings of our destination that change the work per call (no client-side parameter validation,
    # gateway.destinations.kinesis), so that the comparison is of the same library doing the same work.
    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          config=botocore.config.Config(parameter_validation=False))
    client.describe_stream_summary(StreamName=stream)  # connection and model loading outside the timing
    t0, c0 = time.perf_counter(), time.process_time()
    for entries in calls:
        answer = client.put_records(StreamName=stream, Records=entries)
        if answer.get("FailedRecordCount"):
            raise RuntimeError(f"bare boto3: {answer['FailedRecordCount']} records failed")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _say(f"boto3: {records / wall:.0f} records/s, {cpu * 1e6 / records:.2f} µs CPU per record, {cpu / wall:.2f} core")
    return records / wall, cpu * 1e6 / records, cpu / wall


def _summary(dest: str, lib: str, ours: list[tuple[float, float]], bare: list[tuple[float, float, float]],
             ) -> dict[str, float]:
    med = statistics.median
    return {
        f"publisher.{dest}.ratio_vs_{lib}": round(med(o[0] / b[0] for o, b in zip(ours, bare, strict=True)), 3),
        f"publisher.{dest}.cpu_ratio_vs_{lib}": round(med(b[1] / o[1] for o, b in zip(ours, bare, strict=True)), 3),
        f"publisher.{dest}.paired_records_per_s": round(med(o[0] for o in ours), 1),
        f"publisher.{dest}.{lib}_records_per_s": round(med(b[0] for b in bare), 1),
        f"publisher.{dest}.cpu_us_per_record": round(med(o[1] for o in ours), 2),
        f"publisher.{dest}.{lib}_cpu_us_per_record": round(med(b[1] for b in bare), 2),
        f"publisher.{dest}.bare_cpu_share": round(med(b[2] for b in bare), 2),
    }


def run(only: str | None = None) -> dict[str, float]:
    """The figures of both destinations, or of ``only`` ("mqtt" or "kinesis")."""
    with tempfile.TemporaryDirectory(prefix="bench-publisher-ratio-") as tmp:
        root = Path(tmp)
        mosquitto = start_mosquitto(root / "mosquitto")
        kinesalite = start_kinesalite(root)
        try:
            backlog = root / "backlog" / "data"
            _backlog(backlog, RECORDS)
            dests = _destinations({"mosquitto": mosquitto, "kinesalite": kinesalite, "sitewise_port": 0},
                                  {"streams": [STREAM]})
            mqtt_cfg = MqttConfig.model_validate(dests["mqtt"])
            batches = _batches(backlog, mqtt_cfg.batch_messages)
            records = sum(map(len, batches))
            messages = _mqtt_messages(mqtt_cfg, batches) if only != "kinesis" else []
            calls = _kinesis_calls(KinesisConfig.model_validate(dests["kinesis"]), batches) if only != "mqtt" else []
            del batches
            results: dict[str, tuple[list[Any], list[Any]]] = {"mqtt": ([], []), "kinesis": ([], [])}
            defaults: list[float] = []
            for n in range(PAIRS):
                if only != "kinesis":
                    results["mqtt"][0].append(_ours(root, backlog, dests["mqtt"], f"mqtt{n}"))
                    results["mqtt"][1].append(_bare_paho(mosquitto, messages, records, tuned=True))
                    defaults.append(_bare_paho(mosquitto, messages, records, tuned=False)[0])
                # a fresh stream each run: kinesalite keeps every record in memory
                for who in ("ours", "bare") if only != "mqtt" else ():
                    stream = f"bench-{who}-{n}"
                    create_stream(kinesalite.endpoint_url, stream, shards=2)
                    if who == "ours":
                        results["kinesis"][0].append(_ours(root, backlog, {**dests["kinesis"], "stream_name": stream},
                                                           f"kinesis{n}"))
                    else:
                        results["kinesis"][1].append(_bare_boto3(kinesalite.endpoint_url, stream, calls, records))
                    _delete_stream(kinesalite.endpoint_url, stream)
            figures: dict[str, float] = {}
            if only != "kinesis":
                figures |= {**_summary("mqtt", "paho", *results["mqtt"]),
                            "publisher.mqtt.paho_defaults_records_per_s": round(statistics.median(defaults), 1),
                            "publisher.mqtt.ratio_vs_paho_defaults": round(statistics.median(
                                o[0] / d for o, d in zip(results["mqtt"][0], defaults, strict=True)), 3)}
                floor = floor_us_per_record(_payloads(backlog))
                paho = figures["publisher.mqtt.paho_cpu_us_per_record"]
                figures["publisher.mqtt.floor_us_per_record"] = round(floor, 2)
                figures["publisher.mqtt.cpu_ratio_vs_paho_at_floor"] = round(paho / (paho + floor), 3)
            if only != "mqtt":
                figures |= _summary("kinesis", "boto3", *results["kinesis"])
            return figures
        finally:
            kinesalite.stop()
            mosquitto.stop()


def _delete_stream(endpoint: str, stream: str) -> None:
    from devkit.kinesis_peer import client

    client(endpoint).delete_stream(StreamName=stream)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The publisher against bare paho-mqtt and boto3 (issue 18).")
    parser.add_argument("--only", choices=("mqtt", "kinesis"), help="run one destination's pairs only")
    for key, value in run(parser.parse_args().only).items():
        print(f"{key} = {value}")
    print(f"load {os.getloadavg()[0]:.2f}")
