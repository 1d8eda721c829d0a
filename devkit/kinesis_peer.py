"""kinesalite (npm, pinned in tests/peers) as a real Kinesis peer, and the client calls tests need around it.

kinesalite's own CLI listens on every interface, so it is started from a one-line node script that listens on
127.0.0.1 only. It keeps streams in memory; ``createStreamMs: 0`` makes a new stream ACTIVE at once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.peers import ROOT, Proc, free_port, port_open, start, wait_for

KINESALITE = ROOT / "tests" / "peers" / "node_modules" / "kinesalite"
# Fake credentials for local peers: kinesalite checks that requests are signed, not by whom.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDLOCALTEST", "AWS_SECRET_ACCESS_KEY": "local-test-secret",
                    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class Kinesalite:
    proc: Proc
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()


def start_kinesalite(folder: Path, port: int | None = None) -> Kinesalite:
    """kinesalite on 127.0.0.1. It rethrows a client's aborted request (ECONNRESET) and exits, taking every record it
    holds in memory with it; Kinesis does not, so such an abort is only logged (a link reset in a fault test)."""
    node = shutil.which("node")
    if node is None or not (KINESALITE / "index.js").exists():
        raise RuntimeError("node or kinesalite missing: run scripts/setup.sh (make test does)")
    port = port or free_port()
    script = ("process.on('uncaughtException', e => { if (e.code === 'ECONNRESET') "
              "{ console.error('kinesalite: a client aborted a request: ' + e.message); return } "
              "console.error(e); process.exit(1) });"
              f"const k = require({json.dumps(str(KINESALITE))})"
              "({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100});"
              f"k.listen({port}, '127.0.0.1', () => console.log('kinesalite on 127.0.0.1:{port}'));")
    proc = start([node, "-e", script], folder / "kinesalite.log")
    wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 30, "kinesalite to listen")
    if proc.popen.poll() is not None:
        raise RuntimeError(f"kinesalite exited: {proc.output()}")
    return Kinesalite(proc, port)


def client(endpoint_url: str) -> Any:
    import botocore.config
    import botocore.session

    session = botocore.session.get_session()
    return session.create_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint_url,
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(retries={"total_max_attempts": 1}, inject_host_prefix=False),
    )


def create_stream(endpoint_url: str, name: str, shards: int = 1) -> None:
    c = client(endpoint_url)
    c.create_stream(StreamName=name, ShardCount=shards)
    wait_for(lambda: c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
             == "ACTIVE", 10, f"stream {name} to become ACTIVE")


def read_all(endpoint_url: str, name: str) -> list[tuple[str, bytes]]:
    """Every Kinesis record in the stream as (partition key, data), shard by shard, in sequence order."""
    c = client(endpoint_url)
    out: list[tuple[str, bytes]] = []
    for shard in c.list_shards(StreamName=name)["Shards"]:
        iterator = c.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = c.get_records(ShardIterator=iterator, Limit=10_000)
            out += [(r["PartitionKey"], r["Data"]) for r in page["Records"]]
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return out


def gateway_records(endpoint_url: str, name: str) -> list[dict[str, Any]]:
    """The gateway records in the stream (each Kinesis record holds ``{"records": [...]}``), in stream order."""
    return [r for _, data in read_all(endpoint_url, name) for r in json.loads(data)["records"]]
