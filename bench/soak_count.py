"""The soak's reckoning: what was stored in each stream against what each destination delivered, by record id.

- stored: the records the streams hold at the end, read from the embedded store directly (what the stream
  acknowledged; a record the strategy of a full stream dropped is counted as a drop, not as stored);
- delivered: file lines, MQTT messages received by a QoS 1 subscriber with a persistent session, kinesalite records;
- lost = stored records no delivery carried (the delivery path's losses: must be 0);
- duplicates: deliveries of one id beyond the first (the most for any one id, and in total);
- out of order: per source and tag, a first arrival whose sequence number is below one that arrived before it;
- gaps: counter values the countable sources served between the first and the last value stored, never stored
  (a killed or cut-off collector could not read them: not a loss of the delivery path, counted apart).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.record import Record
from gateway.streams import PositionStore, RecordReader
from gateway.streams.embedded import EmbeddedStore


def stored_records(data: Path, streams: Iterable[str]) -> dict[str, list[Record]]:
    """Every record each stream holds, oldest first (a stream never created holds none)."""
    # the strategies' drops are expected here and counted from describe(): the reader's warnings are noise
    logging.getLogger("gateway.streams.records").setLevel(logging.ERROR)
    store = EmbeddedStore(data)
    existing = set(store.list_streams())
    out: dict[str, list[Record]] = {}
    with tempfile.TemporaryDirectory(prefix="soak-count-") as tmp:
        positions = PositionStore(tmp)
        for stream in streams:
            out[stream] = []
            if stream not in existing:
                continue
            reader = RecordReader(store, stream, "soak-count", positions)
            while True:
                batch = reader.poll(max_messages=10_000, timeout_s=0)
                if not batch.messages:
                    break
                out[stream].extend(batch.records)
    return out


def file_lines(folder: Path, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of the file destination (the current file and every rotated one, oldest first) and the lines that
    are not a whole JSON record (a write cut short, e.g. by a full disk)."""
    files = [*sorted(folder.glob(f"{name}.*")), folder / name]
    out: list[dict[str, Any]] = []
    torn: list[str] = []
    for f in files:
        if not f.exists():
            continue
        for line in f.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                torn.append(line.decode(errors="replace"))
    return out, torn


def out_of_order(delivered: list[dict[str, Any]]) -> int:
    """First arrivals whose seq is below an earlier first arrival of the same source and tag."""
    seen: set[str] = set()
    highest: dict[tuple[str, str], int] = {}
    late = 0
    for r in delivered:
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        key = (r["source"], r["tag"])
        if r["seq"] < highest.get(key, -1):
            late += 1
        highest[key] = max(highest.get(key, -1), r["seq"])
    return late


def reckon(name: str, stored: dict[str, list[Record]], delivered: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one destination (``soak.<name>.*``) and the ids it lost, for the report."""
    stored_ids = {r.id for records in stored.values() for r in records}
    counts = Counter(r["id"] for r in delivered)
    lost = sorted(stored_ids - counts.keys())
    metrics = {
        f"soak.{name}.stored": len(stored_ids),
        f"soak.{name}.delivered": len(delivered),
        f"soak.{name}.lost": len(lost),
        f"soak.{name}.duplicates": sum(counts.values()) - len(counts),
        f"soak.{name}.duplicates_max": max(counts.values(), default=1) - 1,
        f"soak.{name}.out_of_order": out_of_order(delivered),
    }
    for stream, records in stored.items():
        metrics[f"soak.{name}.{stream}.lost"] = len({r.id for r in records} - counts.keys())
    return {"metrics": metrics, "lost_ids": lost[:50]}


def gaps(records: list[Record]) -> dict[str, int]:
    """Counter values served between the first and last one stored that no record of the stream holds."""
    values = {int(r.value) for r in records if isinstance(r.value, int | float) and not isinstance(r.value, bool)}
    if not values:
        return {"produced": 0, "distinct": 0, "gaps": 0}
    produced = max(values) - min(values) + 1
    return {"produced": produced, "distinct": len(values), "gaps": produced - len(values)}
