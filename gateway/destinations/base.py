"""The destination contract and routing; the JSON form of a record is :mod:`gateway.destinations.payload`.

Contract (the publisher calls; a destination implements). The configuration model of a destination builds it
(``cfg.build()``, see :mod:`gateway.plugin`); the publisher then calls:

- ``start()`` once before the first send; ``close(timeout_s)`` once after the last send returned (or was given up
  at stop). ``close`` returns within ``timeout_s`` whatever the peer does: blocking work (an SDK's shutdown, a
  worker thread still in a call) is waited for off the event loop and abandoned at the deadline, logged once
  (:func:`gateway.aio.finish_within`). Records of an abandoned call were not committed: they are sent again after a
  restart.
- ``send(records)`` delivers the records and returns only when the service answered (the publisher then
  commits the stream position once nothing is left to retry). It raises a retryable
  :class:`~gateway.errors.DestinationError` when nothing can be known to have arrived (the publisher retries the
  whole batch with backoff: at-least-once), returns the records the service refused for good in
  ``SendResult.rejected`` (the publisher dead-letters them) and those it refused for now in ``SendResult.retry``
  (the publisher resends just those after a backoff). A non-retryable error raised by ``send`` means "something in
  this batch is poison": the publisher bisects the batch to find it. A destination never drops a record silently.
- ``send`` is never called concurrently for one destination instance by one pump; a destination reading several
  streams gets one call per stream at a time, so its client must tolerate that (they all do: calls run on one
  worker thread or are awaited on the loop).
- ``prepare(records)``, optional (:class:`Preparing`; Kinesis has it): builds what ``send(records)`` would send,
  off the event loop, and returns a coroutine function that sends it, or None. The pump calls it once per batch, in
  stream order: while the batch before is being delivered if that one was prepared, else at the batch's turn. A
  destination returns None for a batch whose delivery changes what later batches send (Kinesis: metadata records,
  which fill the headers); such a batch is sent by ``send``. The prepared send is the first attempt only; retries
  and halves of a batch go through ``send``.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.components import published_streams
from gateway.record import Kind, Record

log = logging.getLogger(__name__)

#: What the publisher gives each destination's ``close`` at stop (they close concurrently).
CLOSE_TIMEOUT_S = 5.0
KindName = Literal["value", "score", "alarm", "metric", "meta"]
_ALL_KINDS: tuple[KindName, ...] = ("value", "score", "alarm", "metric", "meta")
_KINDS: dict[str, Kind] = {"value": Kind.VALUE, "score": Kind.SCORE, "alarm": Kind.ALARM, "metric": Kind.METRIC,
                           "meta": Kind.META}


class Route(BaseModel):
    """Which records a destination gets."""

    model_config = ConfigDict(extra="forbid")

    streams: list[str] = Field(
        default_factory=published_streams,  # every component's stream (gateway/components.py): none is forgotten
        description="Streams to read; streams that do not exist yet are waited for.",
    )
    tags: list[str] = Field(default_factory=lambda: ["*"], description="Tag patterns (shell style: *, ?, [..]).")
    kinds: list[KindName] = Field(
        default_factory=lambda: list(_ALL_KINDS), description="Record kinds to send."
    )
    exclude_tags: list[str] = Field(
        default_factory=list, description="Tag patterns never sent here, even when they match tags."
    )
    sources: list[str] = Field(
        default_factory=lambda: ["*"], description="Source patterns (connection or component names) to send."
    )


class DestinationConfigBase(BaseModel):
    """Settings every destination's configuration model has (each model adds ``type``, ``build`` and
    ``diagnose``: :mod:`gateway.plugin`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="Destination name; names its stream positions.")
    enabled: bool = Field(default=True, description="Set false to stop sending (positions are kept).")
    route: Route = Field(default_factory=Route, description="Which streams, tags and kinds go here.")
    batch_messages: int = Field(default=300, ge=1, description="Stream messages read per delivery attempt.")
    batch_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024,
        description="At most this many bytes of stream messages per delivery attempt (at least one message): "
                    "bounds the publisher's memory when messages are large; decoded records take ~5x the bytes.",
    )
    retry_min_s: float = Field(default=1.0, gt=0, description="First retry delay (doubles, with jitter).")
    retry_max_s: float = Field(default=60.0, gt=0, description="Longest retry delay; retries never stop.")
    max_records_per_s: float | None = Field(
        default=None, gt=0, description="Rate limit (e.g. for IoT Core quotas); null for none."
    )


def _patterns(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex for shell-style patterns; None when they match everything (the fast path)."""
    if "*" in patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)")


class Router:
    """Compiled routing of one destination: kind, then source, then tag patterns minus the excluded ones."""

    def __init__(self, route: Route) -> None:
        self._kinds = {_KINDS[k] for k in route.kinds}
        self._tags = _patterns(route.tags)
        self._sources = _patterns(route.sources)
        self._excluded = re.compile("|".join(fnmatch.translate(p) for p in route.exclude_tags)) \
            if route.exclude_tags else None
        self._everything = (self._kinds == set(_KINDS.values()) and self._tags is None and self._sources is None
                            and self._excluded is None)

    def select(self, records: list[Record]) -> list[Record]:
        """The records this route wants, in order: ``records`` itself when it wants everything (the default route:
        a test per record cost ~0.2 µs, a few % of the publisher's CPU)."""
        return records if self._everything else [r for r in records if self.wants(r)]

    def wants(self, record: Record) -> bool:
        return (
            record.kind in self._kinds
            and (self._sources is None or self._sources.match(record.source) is not None)
            and (self._tags is None or self._tags.match(record.tag) is not None)
            and (self._excluded is None or self._excluded.match(record.tag) is None)
        )


@dataclass
class SendResult:
    """What a send achieved: everything in neither ``rejected`` nor ``retry`` was accepted.

    ``retry`` holds records the service refused for now (throttling, a per-entry internal error, a partial
    failure): the publisher resends only those, after a backoff, before it moves its position on.
    """

    rejected: list[tuple[Record, str]] = field(default_factory=list)
    bytes_sent: int = 0
    retry: list[Record] = field(default_factory=list)
    retry_reason: str = ""


#: A batch prepared by :meth:`Preparing.prepare`: sends it, as ``send`` of its records would.
Prepared = Callable[[], Coroutine[Any, Any, SendResult]]


class Preparing(Protocol):
    """A destination that builds a batch's requests ahead, while the batch before it is in flight (the contract is
    the module docstring)."""

    def prepare(self, records: list[Record]) -> Prepared | None: ...


class Destination(Protocol):
    """A destination's implementation, built by its configuration model; the contract is the module docstring."""

    name: str

    async def start(self) -> None: ...

    async def send(self, records: list[Record]) -> SendResult: ...

    async def close(self, timeout_s: float) -> None: ...
