"""AWS IoT SiteWise destination: ``BatchPutAssetPropertyValue`` by property alias.

A record's tag is its property alias (collectors' ``tag_map`` is where aliases are set), unless ``aliases`` or
``alias_template`` say otherwise. Values are grouped by alias into entries of at most 10 values and requests of at
most 10 entries, sent on a few concurrent calls (SiteWise stores by timestamp, so arrival order does not matter).

What SiteWise cannot take is decided here, before sending, and dead-lettered with the reason: timestamps outside
[now - 7 days, now + 10 min], records without a value, integers beyond 32 bits, strings over 1024 characters. A
list or dict value (an OPC UA array or structure) goes as its compact JSON text to a STRING property when that text
fits the 1024 characters, and is dead-lettered with the reason when it does not (configure one tag per array
element at the collector instead). ``Kind.META`` records (a tag's units and range) are left out: SiteWise keeps
units in the asset model, not as values. They are neither sent nor dead-lettered (a dead letter is a record that
should have arrived), so the publisher counts them in ``records_sent`` like the values of the same batch; route
``kinds`` without ``meta`` to keep them out of that count.
Per-entry errors in the answer: ThrottlingException, InternalFailureException, ServiceUnavailableException (and
AccessDenied, an IAM fix away) are resent, only for those values; ResourceNotFoundException (unknown alias),
InvalidRequestException (e.g. a type mismatch) and TimestampOutOfRangeException are dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from gateway.aio import finish_within
from gateway.destinations.aws import (
    CREDENTIAL_CODES,
    RETRYABLE_CODES,
    AwsSettings,
    classify,
    diagnose_aws,
    make_client,
    warn_insecure_endpoint,
)
from gateway.destinations.base import DestinationConfigBase, SendResult
from gateway.destinations.payload import topic_fields
from gateway.diagnostics import Finding
from gateway.errors import DestinationError
from gateway.record import Kind, Record

MAX_ENTRIES = 10
MAX_VALUES = 10
MAX_AGE_S = 7 * 24 * 3600
MAX_FUTURE_S = 10 * 60
MAX_STRING = 1024
_INT32 = (-(2**31), 2**31 - 1)

_FIX = {
    "ResourceNotFoundException": "create the asset property with this alias (or correct tag_map / aliases)",
    "InvalidRequestException": "make the record's type match the property's data type (tag_map to another "
    "property, or change the property's data type)",
    "TimestampOutOfRangeException": "SiteWise takes values from the last 7 days up to 10 minutes ahead: check the "
    "source's clock",
}


class SiteWiseConfig(DestinationConfigBase):
    """Send values to AWS IoT SiteWise asset properties by alias."""

    type: Literal["sitewise"] = Field(default="sitewise", description="Destination type.")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="Region, endpoint and timeouts.")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Tag -> property alias, for tags whose name is not their alias."
    )
    alias_template: str = Field(
        default="{tag_raw}",
        description="Alias of tags not in aliases; fields {tag_raw} (the tag as is), {tag} (without outer "
        "slashes), {source}, {group} and alias_vars, e.g. '/{site}/{tag}'.",
    )
    alias_vars: dict[str, str] = Field(default_factory=dict, description="Extra alias template fields.")
    entries_per_request: int = Field(default=MAX_ENTRIES, ge=1, le=MAX_ENTRIES, description="Entries per call.")
    values_per_entry: int = Field(default=MAX_VALUES, ge=1, le=MAX_VALUES, description="Values per entry.")
    concurrent_requests: int = Field(default=4, ge=1, le=32, description="Calls in flight at once.")

    def build(self) -> SiteWiseDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return SiteWiseDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of credentials and the SiteWise endpoint (see :mod:`gateway.plugin`)."""
        return await diagnose(self, timeout_s)


@dataclass
class _Entry:
    alias: str
    values: list[dict[str, Any]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


def variant(value: object) -> dict[str, Any] | str:
    """SiteWise's value variant for a record value, or why there is none."""
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        if not _INT32[0] <= value <= _INT32[1]:
            return f"integer {value} does not fit SiteWise's 32-bit INTEGER: map the tag to a DOUBLE property"
        return {"integerValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"string of {len(value)} characters exceeds SiteWise's {MAX_STRING}: shorten it at the source"
        return {"stringValue": value}
    if isinstance(value, list | dict):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if len(text) > MAX_STRING:
            what = "array" if isinstance(value, list) else "structure"
            return (f"{what} of {len(text)} characters as JSON exceeds SiteWise's {MAX_STRING}-character string: "
                    "configure one tag per element at the collector, or route this tag to another destination")
        return {"stringValue": text}
    return "no value (quality BAD at the source): SiteWise needs one; fix the source or route BAD values elsewhere"


class SiteWiseDestination:
    def __init__(self, cfg: SiteWiseConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.what = f"sitewise destination {cfg.name}"
        self._client: Any = None
        self._pool = ThreadPoolExecutor(cfg.concurrent_requests, thread_name_prefix=f"sitewise-{cfg.name}")
        self._aliases: dict[tuple[str, str], str] = {}

    async def start(self) -> None:
        """Only a warning: the client is made by the first send, so a missing region or credential is a retry."""
        warn_insecure_endpoint(self.cfg.aws, self.what)

    def alias(self, r: Record) -> str:
        key = (r.source, r.tag)
        found = self._aliases.get(key)
        if found is None:
            found = self.cfg.aliases.get(r.tag) or self.cfg.alias_template.format(
                tag_raw=r.tag, **topic_fields(r, self.cfg.alias_vars))
            if len(self._aliases) < 100_000:
                self._aliases[key] = found
        return found

    def entries(self, records: list[Record], now_s: float) -> tuple[list[_Entry], list[tuple[Record, str]]]:
        """Entries of at most ``values_per_entry`` values per alias, and what SiteWise could never take."""
        refused: list[tuple[Record, str]] = []
        open_: dict[str, _Entry] = {}
        out: list[_Entry] = []
        low, high = (now_s - MAX_AGE_S) * 1e9, (now_s + MAX_FUTURE_S) * 1e9
        for r in records:
            if r.kind == Kind.META:
                continue  # no place for metadata in SiteWise (module docstring)
            if not low <= r.source_ts_ns <= high:
                side = "older than 7 days" if r.source_ts_ns < low else "more than 10 minutes in the future"
                refused.append((r, f"timestamp {r.source_ts_ns} is {side}: {_FIX['TimestampOutOfRangeException']}"))
                continue
            v = variant(r.value)
            if isinstance(v, str):
                refused.append((r, v))
                continue
            try:
                alias = self.alias(r)
            except (KeyError, IndexError, ValueError) as exc:
                refused.append((r, f"alias_template {self.cfg.alias_template!r} cannot be filled: {exc!r}"))
                continue
            entry = open_.get(alias)
            if entry is None or len(entry.values) >= self.cfg.values_per_entry:
                entry = open_[alias] = _Entry(alias)
                out.append(entry)
            secs, nanos = divmod(r.source_ts_ns, 1_000_000_000)
            entry.values.append({"value": v, "timestamp": {"timeInSeconds": secs, "offsetInNanos": nanos},
                                 "quality": r.quality.name})
            entry.records.append(r)
        return out, refused

    async def send(self, records: list[Record]) -> SendResult:
        entries, refused = self.entries(records, time.time())
        result = SendResult(rejected=refused)
        if not entries:
            return result
        if self._client is None:
            self._client = await asyncio.get_running_loop().run_in_executor(
                self._pool, make_client, "iotsitewise", self.cfg.aws, self.what, self.cfg.concurrent_requests)
        n = self.cfg.entries_per_request
        requests = [entries[i : i + n] for i in range(0, len(entries), n)]
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(*(loop.run_in_executor(self._pool, self._put, req) for req in requests),
                                        return_exceptions=True)
        failures: list[DestinationError] = []
        for outcome in outcomes:
            if isinstance(outcome, DestinationError):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug, not the service: the publisher logs it with its traceback
        if failures and len(failures) == len(outcomes):
            # Nothing accepted: retry the batch, or let the publisher bisect it when every call was refused.
            raise next((f for f in failures if f.retryable), failures[0])
        for req, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, BaseException):  # others were accepted: resend only this call's values
                result.retry += [r for e in req for r in e.records]
                result.retry_reason = result.retry_reason or str(outcome)
            else:
                self._apply(req, outcome, result)
        return result

    def _put(self, req: list[_Entry]) -> tuple[list[dict[str, Any]], int]:
        body = [{"entryId": str(i), "propertyAlias": e.alias, "propertyValues": e.values} for i, e in enumerate(req)]
        try:
            answer = self._client.batch_put_asset_property_value(entries=body)
        except Exception as exc:  # botocore's error tree: classified into retry / refuse by classify()
            raise classify(exc, self.what) from exc
        size = sum(len(e.alias) + 60 * len(e.values) for e in req)  # an estimate: botocore does not expose it
        return list(answer.get("errorEntries") or []), size

    def _apply(self, req: list[_Entry], outcome: tuple[list[dict[str, Any]], int], result: SendResult) -> None:
        errors, size = outcome
        result.bytes_sent += size
        for err in errors:
            entry = req[int(err["entryId"])]
            for e in err.get("errors") or []:
                code = str(e.get("errorCode", ""))
                stamps = {(int(t["timeInSeconds"]), int(t.get("offsetInNanos", 0))) for t in e.get("timestamps") or []}
                hit = [r for r in entry.records if not stamps or divmod(r.source_ts_ns, 1_000_000_000) in stamps]
                if code in RETRYABLE_CODES or code in CREDENTIAL_CODES:
                    result.retry += hit
                    result.retry_reason = result.retry_reason or f"{self.what}: {code} for alias {entry.alias}"
                else:
                    fix = _FIX.get(code, "see the message")
                    reason = f"{self.what}: {code} for alias {entry.alias}: {e.get('errorMessage', '')}. Fix: {fix}"
                    result.rejected += [(r, reason) for r in hit]

    async def close(self, timeout_s: float) -> None:
        # Calls not started yet are dropped (their records were not committed: sent again after a restart). A call
        # in flight waits for its answer up to aws.read_timeout_s: waited for off the loop, until the deadline.
        self._pool.shutdown(wait=False, cancel_futures=True)
        await finish_within(self.what, timeout_s, lambda: self._pool.shutdown(wait=True))


async def diagnose(cfg: SiteWiseConfig, timeout_s: float) -> list[Finding]:
    """Credentials, region and the SiteWise data endpoint (data.iotsitewise.<region>.amazonaws.com)."""
    return await diagnose_aws("data.iotsitewise", cfg.aws, timeout_s)
