"""The destination contract, routing, and the JSON form of a record that every text destination sends.

Contract (the publisher calls; a destination implements):

- ``start()`` once before the first send; ``close()`` once after the last send returned.
- ``send(records)`` delivers the records and returns only when the service accepted them (the publisher then
  commits the stream position). It raises a retryable :class:`~gateway.errors.DestinationError` when nothing can be
  known to have arrived (the publisher retries the whole batch with backoff: at-least-once), and returns the
  records the service refused for good in ``SendResult.rejected`` (the publisher dead-letters them). A destination
  never drops a record silently.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.record import Kind, Record

KindName = Literal["value", "score", "alarm", "metric"]
_ALL_KINDS: tuple[KindName, ...] = ("value", "score", "alarm", "metric")
_KINDS: dict[str, Kind] = {"value": Kind.VALUE, "score": Kind.SCORE, "alarm": Kind.ALARM, "metric": Kind.METRIC}


class Route(BaseModel):
    """Which records a destination gets."""

    model_config = ConfigDict(extra="forbid")

    streams: list[str] = Field(
        default_factory=lambda: ["factoryedge-opcua", "factoryedge-modbus", "factoryedge-opcda",
                                 "factoryedge-anomaly", "factoryedge-metrics"],
        description="Streams to read; streams that do not exist yet are waited for.",
    )
    tags: list[str] = Field(default_factory=lambda: ["*"], description="Tag patterns (shell style: *, ?, [..]).")
    kinds: list[KindName] = Field(
        default_factory=lambda: list(_ALL_KINDS), description="Record kinds to send."
    )


class DestinationBase(BaseModel):
    """Settings every destination has."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="Destination name; names its stream positions.")
    enabled: bool = Field(default=True, description="Set false to stop sending (positions are kept).")
    route: Route = Field(default_factory=Route, description="Which streams, tags and kinds go here.")
    batch_messages: int = Field(default=100, ge=1, description="Stream messages read per delivery attempt.")
    retry_min_s: float = Field(default=1.0, gt=0, description="First retry delay (doubles, with jitter).")
    retry_max_s: float = Field(default=60.0, gt=0, description="Longest retry delay; retries never stop.")
    max_records_per_s: float | None = Field(
        default=None, gt=0, description="Rate limit (e.g. for IoT Core quotas); null for none."
    )


class Router:
    """Compiled routing of one destination."""

    def __init__(self, route: Route) -> None:
        self._kinds = {_KINDS[k] for k in route.kinds}
        self._all_tags = route.tags == ["*"]
        self._tags = re.compile("|".join(fnmatch.translate(p) for p in route.tags))

    def wants(self, record: Record) -> bool:
        return record.kind in self._kinds and (self._all_tags or self._tags.match(record.tag) is not None)


@dataclass
class SendResult:
    """What a send achieved: everything not in ``rejected`` was accepted."""

    rejected: list[tuple[Record, str]] = field(default_factory=list)
    bytes_sent: int = 0


class Destination(Protocol):
    name: str

    async def start(self) -> None: ...

    async def send(self, records: list[Record]) -> SendResult: ...

    async def close(self) -> None: ...


def iso_ns(ts_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds (datetime keeps microseconds only)."""
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def record_json(r: Record) -> dict[str, Any]:
    """The JSON form of a record. ``id`` lets consumers drop duplicates after a replay."""
    return {
        "id": r.id,
        "source": r.source,
        "tag": r.tag,
        "value": r.value,
        "quality": r.quality.name,
        "kind": r.kind.name.lower(),
        "sourceTs": iso_ns(r.source_ts_ns),
        "gatewayTs": iso_ns(r.gateway_ts_ns),
        "seq": r.seq,
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
