"""The one counter vocabulary of every component: status files, METRIC records and ``gatewayctl`` use these names.

A counter that counts data is ``<what>_<fate>``: the unit it counts (``values``, ``records``, ``messages``,
``bytes``, ``events``...), optionally qualified (``bad_values_read``), and what happened to it, one of
:data:`FATES`. A counter of something tried again is ``<action>_retries``; a failure counted where it happens (its
retry, if any, counted on its own) is ``<action>_errors``. Counters of events that move no data are the plural
noun of the event (:data:`EVENTS`). Everything else a status file carries is a gauge (a level, an age, a state:
:data:`GAUGES`), named with its unit (``_s``, ``_ns``, ``_ms``, ``_messages``, ``_per_s``).

docs/counters.md is the table of every name, where it appears and what it means; ``tests/test_counters_vocabulary``
fails when a component writes a name outside this vocabulary or missing from that table.

:data:`RENAMED` maps the names a previous version wrote to today's, so that ``gatewayctl`` still reads the status
file of a gateway upgraded in place (its components rewrite it with the new names at their next status interval).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FATES = {
    "read": "taken in from a peer (a device, a server) or from a local stream",
    "written": "appended to a local stream",
    "sent": "accepted by a peer outside the gateway (a cloud service, a broker, a file)",
    "scored": "scored by an anomaly model",
    "suppressed": "not written on purpose, with nothing missing downstream (a deadband repeat, a result already "
                  "written before a restart)",
    "dropped": "discarded by the gateway on purpose and counted: a bound was reached or the item cannot be handled; "
               "it never arrives downstream",
    "dead_lettered": "refused for good by a destination and kept in the dead-letter stream (gatewayctl replay)",
    "lost": "went missing before the gateway could handle it (overwritten by a full stream, time to live)",
    "retries": "attempts made again after a failure",
    "errors": "failures, counted where they happen; what follows (a retry, a drop) has its own counter",
}
"""The last word(s) of a data counter's name, and what it means."""

EVENTS = frozenset({"restarts", "gaps", "store_resets", "model_saves", "model_updates", "subscription_rebuilds",
                    "overloads"})
"""Counters of events that move no data: the plural noun of the event."""

DURATIONS = frozenset({"gap_s"})
"""Counters that total a duration: named with their unit."""

GAUGES = frozenset({
    # collectors, per connection
    "connected", "last_good_read_ns", "last_error", "append_latency_ms_last", "append_latency_ms_max",
    "gap_open_since_ns", "values_per_s", "extra", "last_good_read_age_s", "tags",
    # publisher, per destination
    "backlog_messages", "oldest_unsent_age_s", "last_success_ns", "last_success_age_s", "records_per_s",
    "dead_letter_reasons",
    # anomaly detector: events and inputs
    "queued",
})
"""Values a status file carries next to its counters that are not counters (they go up and down)."""

RENAMED = {
    "values_bad": "bad_values_read",
    "values_oversize": "oversize_values_read",
    "reconnects": "connect_retries",
    "dropped_pending": "values_dropped",
    "retries": "send_retries",
    "dead_lettered": "records_dead_lettered",
    "lost_messages": "messages_lost",
    "corrupt_messages": "corrupt_messages_read",
    "written": "records_written",
    "suppressed": "records_suppressed",
    "future": "future_records_dropped",
    "saves": "model_saves",
    "save_errors": "model_save_errors",
    "scored": "vectors_scored",
    "anomalous": "anomalous_vectors_scored",
    "updates": "model_updates",
    "published": "events_sent",
    "failed": "event_send_errors",
    "dropped": "events_dropped",
}
"""Counter names of the previous version -> today's, for what an old gateway left on disk (status, losses, models)."""


def problem(name: str) -> str | None:
    """Why ``name`` is not a counter or gauge name of the vocabulary, or None when it is."""
    if name in EVENTS or name in DURATIONS or name in GAUGES:
        return None
    if name in RENAMED:
        return f"{name!r} is the previous version's name: use {RENAMED[name]!r}"
    for fate in FATES:
        if name.endswith(f"_{fate}") and len(name) > len(fate) + 1:
            return None
    return (f"{name!r} does not end with a fate of the counter vocabulary ({', '.join(FATES)}) and is not a listed "
            "event, duration or gauge: rename it (gateway/counters.py, docs/counters.md)")


def current_names(counters: Mapping[str, Any]) -> dict[str, Any]:
    """``counters`` (one connection's, destination's, ... part of a status file) with the previous version's names
    replaced by today's; a name present in both keeps today's value."""
    out = {k: v for k, v in counters.items() if k not in RENAMED}
    for old, new in RENAMED.items():
        if old in counters and new not in out:
            out[new] = counters[old]
    return out
