"""Kinesis Data Streams destination: ``PutRecords``, only the failed records of a partial failure resent.

Records are aggregated per partition key (the tag, or the source) into Kinesis records holding
``{"records": [...]}``, the same body as the MQTT destinations, up to ``records_per_kinesis_record`` records and
1 MiB each. Calls carry at most 500 Kinesis records and 5 MiB.

Order per partition key survives partial failures because a call never holds two Kinesis records of one key: the
key's next aggregate goes in a later round, after the previous one was accepted, and a key whose record failed
sends nothing more in this batch (its records are resent, in order, after the backoff). Throughput comes from
aggregation, so this costs nothing in practice. A gateway record larger than a Kinesis record can hold is
dead-lettered. Each Kinesis record carries the ``meta`` header of its tags (units, range: see
:mod:`gateway.destinations.payload`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

from pydantic import Field

from gateway.aio import finish_within
from gateway.destinations.aws import (
    AwsSettings,
    classify,
    diagnose_aws,
    error_code,
    make_client,
    warn_insecure_endpoint,
)
from gateway.destinations.base import DestinationConfigBase, Prepared, SendResult
from gateway.destinations.payload import ENVELOPE_OVERHEAD, MetaCache, pack_with_meta, record_items
from gateway.diagnostics import Finding, failed, passed
from gateway.errors import DestinationError
from gateway.record import Kind, Record

MAX_RECORD_BYTES = 1024 * 1024  # data + partition key
MAX_CALL_BYTES = 5 * 1024 * 1024
MAX_CALL_RECORDS = 500
#: Whole-call errors about the stream, not the data: retry (after the fix), never bisect the batch.
_STREAM_CODES = {
    "ResourceNotFoundException": "create the Kinesis stream (or fix stream_name / region)",
    "ResourceInUseException": "wait until the stream is ACTIVE",
    "KMSDisabledException": "enable the stream's KMS key",
    "KMSInvalidStateException": "fix the state of the stream's KMS key",
    "KMSNotFoundException": "the stream's KMS key is gone: re-encrypt the stream with an existing key",
    "KMSAccessDeniedException": "allow kms:GenerateDataKey on the stream's key to the device's role",
    "KMSOptInRequired": "opt in to KMS for the account",
}


class KinesisConfig(DestinationConfigBase):
    """Put records to a Kinesis data stream."""

    type: Literal["kinesis"] = Field(default="kinesis", description="Destination type.")
    stream_name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$",
                             description="Kinesis data stream to put records to (letters, digits, _ . -).")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="Region, endpoint and timeouts.")
    partition_key: Literal["tag", "source"] = Field(
        default="tag", description="Partition key: per tag (spreads load, order per tag) or per source."
    )
    records_per_kinesis_record: int = Field(
        default=500, ge=1, le=10_000,
        description="Gateway records aggregated into one Kinesis record ({\"records\": [...]}); 1 for none.",
    )
    max_record_bytes: int = Field(
        default=MAX_RECORD_BYTES, ge=1024, le=MAX_RECORD_BYTES, description="Largest Kinesis record (key + data)."
    )
    concurrent_calls: int = Field(default=4, ge=1, le=32, description="PutRecords calls in flight at once.")

    def build(self) -> KinesisDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return KinesisDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of credentials, the endpoint and the stream (see :mod:`gateway.plugin`)."""
        return await diagnose(self, timeout_s)


class KinesisDestination:
    def __init__(self, cfg: KinesisConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.what = f"kinesis destination {cfg.name} (stream {cfg.stream_name})"
        self._client: Any = None
        self._pool = ThreadPoolExecutor(cfg.concurrent_calls, thread_name_prefix=f"kinesis-{cfg.name}")
        self._meta = MetaCache()  # the latest metadata per tag: the header of each Kinesis record
        # An aggregation sees the metadata cache between two batches' updates, never during one: a batch prepared in a
        # pump's read thread while another stream's batch is aggregated on the loop (one destination, two streams).
        self._aggregating = threading.Lock()

    async def start(self) -> None:
        """Only a warning: the client is made by the first send, so a missing region or credential is a retry."""
        warn_insecure_endpoint(self.cfg.aws, self.what)

    def aggregates(
        self, records: list[Record]
    ) -> tuple[dict[str, list[tuple[bytes, list[Record]]]], list[tuple[Record, str]]]:
        """Per partition key, in order: (Kinesis record data, the gateway records in it); and what cannot fit."""
        keyed: dict[str, list[tuple[bytes, Record]]] = {}
        refused: list[tuple[Record, str]] = []
        self._meta.observe(records)
        by_tag = self.cfg.partition_key == "tag"
        limit = self.cfg.max_record_bytes
        room: dict[str, int] = {}  # per key: the largest item a Kinesis record of that key holds
        for r, item in zip(records, record_items(records), strict=True):
            key = (r.tag if by_tag else r.source)[:256] or "-"
            most = room.get(key)
            if most is None:
                most = room[key] = limit - len(ENVELOPE_OVERHEAD) - len(key.encode())
            if len(item) > most:
                refused.append((r, f"record of {len(item)} bytes exceeds the Kinesis record limit of "
                                   f"{limit} bytes: shorten the value at the source"))
                continue
            group = keyed.get(key)
            if group is None:
                group = keyed[key] = []
            group.append((item, r))
        return {key: pack_with_meta(items, limit - len(key.encode()), self._meta, self.cfg.records_per_kinesis_record)
                for key, items in keyed.items()}, refused

    def prepare(self, records: list[Record]) -> Prepared | None:
        """``send(records)`` with its Kinesis records built now, off the event loop, while the previous batch is in
        flight (:class:`~gateway.destinations.base.Preparing`). None when ``records`` hold metadata: it changes the
        headers of what follows, so such a batch is aggregated at its turn."""
        if any(r.kind == Kind.META for r in records):
            return None
        with self._aggregating:
            queues, refused = self.aggregates(records)
        return partial(self._send, queues, refused)

    async def send(self, records: list[Record]) -> SendResult:
        with self._aggregating:
            queues, refused = self.aggregates(records)
        return await self._send(queues, refused)

    async def _send(self, queues: dict[str, list[tuple[bytes, list[Record]]]], refused: list[tuple[Record, str]]
                    ) -> SendResult:
        result = SendResult(rejected=refused)
        if not queues:
            return result
        loop = asyncio.get_running_loop()
        if self._client is None:
            # Without botocore's parameter validation: it checks the types and minimum lengths of what _put builds
            # (bytes, a key of 1-256 characters, the configured stream name); ~0.1 µs a record (issue 18), and the
            # service validates every call again.
            self._client = await loop.run_in_executor(
                self._pool, partial(make_client, validate=False), "kinesis", self.cfg.aws, self.what,
                self.cfg.concurrent_calls)
        accepted_any = False
        while queues:
            # One round: the head aggregate of every key, so no call holds two records of one key.
            heads = [(key, q[0]) for key, q in queues.items()]
            calls = _calls(heads)
            outcomes = await asyncio.gather(*(loop.run_in_executor(self._pool, self._put, c) for c in calls),
                                            return_exceptions=True)
            for call, outcome in zip(calls, outcomes, strict=True):
                failed_keys: list[str] = []
                if isinstance(outcome, DestinationError):
                    if not accepted_any and len(calls) == 1:
                        raise outcome  # nothing accepted yet: retry, or bisect when the data is at fault
                    failed_keys = [key for key, _ in call]
                    result.retry_reason = result.retry_reason or str(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome  # a bug: the publisher logs it with its traceback
                else:
                    for (key, (data, _)), code in zip(call, outcome, strict=True):
                        if code:
                            failed_keys.append(key)
                            result.retry_reason = result.retry_reason or f"{self.what}: {code} (partial failure)"
                        else:
                            accepted_any = True
                            result.bytes_sent += len(data)
                            queues[key].pop(0)
                            if not queues[key]:
                                del queues[key]
                for key in failed_keys:  # this key waits for the backoff: its records go back, in order
                    result.retry += [r for _, recs in queues.pop(key) for r in recs]
        return result

    def _put(self, call: list[tuple[str, tuple[bytes, list[Record]]]]) -> list[str]:
        """One PutRecords; returns the error code per record ('' for accepted)."""
        entries = [{"Data": data, "PartitionKey": key} for key, (data, _) in call]
        try:
            answer = self._client.put_records(StreamName=self.cfg.stream_name, Records=entries)
        except Exception as exc:  # botocore's error tree: classified into retry / refuse below
            code = error_code(exc)
            if code in _STREAM_CODES or code.startswith("KMS"):
                raise DestinationError(f"{self.what}: {code}", fix=_STREAM_CODES.get(code, "check the stream"),
                                       retryable=True) from exc
            raise classify(exc, self.what) from exc
        return [str(r.get("ErrorCode") or "") for r in answer["Records"]]

    async def close(self, timeout_s: float) -> None:
        # Calls not started yet are dropped (their records were not committed: sent again after a restart). A call
        # in flight waits for its answer up to aws.read_timeout_s: waited for off the loop, until the deadline.
        self._pool.shutdown(wait=False, cancel_futures=True)
        await finish_within(self.what, timeout_s, lambda: self._pool.shutdown(wait=True))


def _calls(heads: list[tuple[str, tuple[bytes, list[Record]]]]) -> list[list[tuple[str, tuple[bytes, list[Record]]]]]:
    """Split a round into calls of at most 500 records and 5 MiB."""
    calls: list[list[tuple[str, tuple[bytes, list[Record]]]]] = [[]]
    size = 0
    for key, agg in heads:
        n = len(agg[0]) + len(key.encode())
        if calls[-1] and (len(calls[-1]) >= MAX_CALL_RECORDS or size + n > MAX_CALL_BYTES):
            calls.append([])
            size = 0
        calls[-1].append((key, agg))
        size += n
    return calls


async def diagnose(cfg: KinesisConfig, timeout_s: float) -> list[Finding]:
    """Credentials, region, the Kinesis endpoint, and the stream: it exists and is ACTIVE."""
    findings = await diagnose_aws("kinesis", cfg.aws, timeout_s)
    if not all(f.ok is not False for f in findings):
        return findings  # the stream cannot be asked about without credentials and an endpoint
    aws = cfg.aws.model_copy(update={"connect_timeout_s": timeout_s, "read_timeout_s": timeout_s})

    def describe() -> str:
        client = make_client("kinesis", aws, f"kinesis destination {cfg.name}", pool=1)
        return str(client.describe_stream_summary(StreamName=cfg.stream_name)
                   ["StreamDescriptionSummary"]["StreamStatus"])

    import botocore.exceptions

    try:
        status = await asyncio.wait_for(asyncio.to_thread(describe), timeout_s + 1)
    except asyncio.TimeoutError:
        findings.append(failed("stream", f"no answer about stream {cfg.stream_name} within {timeout_s} s",
                               "check the endpoint and network"))
        return findings
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, DestinationError) as exc:
        code = error_code(exc) or type(exc).__name__
        findings.append(failed("stream", f"stream {cfg.stream_name}: {code}",
                               _STREAM_CODES.get(code, "check stream_name, region and the IAM permissions "
                                                       "(kinesis:DescribeStreamSummary, kinesis:PutRecords)")))
        return findings
    ok = status in ("ACTIVE", "UPDATING")
    findings.append(passed("stream", f"{cfg.stream_name} is {status}") if ok else
                    failed("stream", f"{cfg.stream_name} is {status}", "wait until the stream is ACTIVE"))
    return findings
