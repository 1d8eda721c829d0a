"""``gatewayctl streams | tail | buffer``: what the streams hold and who is behind on them.

Everything here reads; nothing commits a reader position (``tail`` reads with a reader that never commits).
``buffer --ack-losses`` is the one write: it acknowledges the loss counters shown (they stay counted).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from gateway.cli.common import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    SELF_READERS,
    fmt_bytes,
    fmt_duration,
    fmt_losses,
    open_store,
    print_json,
    safe,
    store_dir,
    table,
    unacknowledged_losses,
)

if TYPE_CHECKING:
    from gateway.record import Record
    from gateway.streams.base import StreamStore


def register(subparsers: Any) -> None:
    streams = subparsers.add_parser("streams", help="list streams with depth, size and drops",
                                    description="Example: gatewayctl streams --store /var/lib/factoryedge/data")
    streams.set_defaults(func=cmd_streams)
    tail = subparsers.add_parser(
        "tail", help="show decoded records of a stream",
        description="Examples:\n  gatewayctl tail factoryedge-opcua -n 50\n"
        "  gatewayctl tail factoryedge-opcua --tag 'Reactor/*' --follow",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tail.add_argument("stream")
    tail.add_argument("--tag", action="append", help="tag pattern, e.g. 'Reactor/*' (repeat for several)")
    tail.add_argument("-n", "--messages", type=int, default=10, help="start this many messages from the end")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C stops)")
    tail.set_defaults(func=cmd_tail)
    buffer = subparsers.add_parser(
        "buffer", help="backlog per destination and stream: unsent messages and oldest unsent age",
        description="Exit code 1 when a reader's backlog is older than --max-age, or losses are unacknowledged.")
    buffer.add_argument("--max-age", type=float, default=300.0, metavar="S",
                        help="flag backlogs whose oldest unsent message is older than this (default 300 s)")
    buffer.add_argument("--ack-losses", action="store_true",
                        help="acknowledge every loss counted so far (after dealing with its cause): status, buffer "
                        "and doctor stop showing it; the cumulative counts stay")
    buffer.set_defaults(func=cmd_buffer)


def stream_rows(store: StreamStore) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in store.list_streams():
        info = store.describe(name)
        rows.append({"stream": name, "messages": info.message_count, "oldest_seq": info.oldest_seq,
                     "next_seq": info.next_seq, "bytes": info.total_bytes, "max_bytes": info.spec.max_size_bytes,
                     "full_pct": round(100 * info.total_bytes / info.spec.max_size_bytes, 1),
                     "strategy_on_full": info.spec.strategy_on_full.value,
                     "dropped": info.dropped_messages, "rejected": info.rejected_appends,
                     "lost": info.lost_messages, "corrupt_bytes": info.corrupt_bytes})
    return rows


def cmd_streams(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        rows = stream_rows(store)
    finally:
        store.close()
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(table([[r["stream"], r["messages"], fmt_bytes(r["bytes"]), f"{r['full_pct']:.1f}", r["dropped"],
                  r["rejected"], r["lost"]] for r in rows],
                ["stream", "messages", "size", "full %", "dropped", "rejected", "lost"], right={1, 2, 3, 4, 5, 6}))
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from gateway.destinations.payload import record_json
    from gateway.errors import CodecError

    store = open_store(args)
    position = max(0, store.describe(args.stream).next_seq - args.messages)
    patterns = args.tag or []
    try:
        while True:
            messages = store.read(args.stream, position, max_count=500, timeout_s=1.0 if args.follow else 0)
            for msg in messages:
                position = msg.seq + 1
                try:
                    from gateway.codec import decode_batch

                    records = decode_batch(msg.payload)
                except CodecError as exc:
                    print(f"message {msg.seq}: cannot decode ({safe(exc)})", file=sys.stderr)
                    continue
                for r in records:
                    if patterns and not any(fnmatch.fnmatchcase(r.tag, p) for p in patterns):
                        continue
                    rec = record_json(r)
                    # tag, source and value come from devices: escaped (JSON escapes them by itself)
                    print(json.dumps(rec) if args.json else tail_line(r, rec))
            sys.stdout.flush()
            if not args.follow and not messages:
                return EXIT_OK
    finally:
        store.close()


#: The most characters of an array or structure value ``tail`` prints on a line (``--json`` prints it whole).
TAIL_VALUE_CHARS = 120


def tail_line(r: Record, rec: dict[str, Any]) -> str:
    """One record as ``tail`` prints it: time, source, tag, value, quality, kind, then the status name when the
    status is not Good (with its info bits, e.g. ``Good [Overflow]``) and the flags when any is set."""
    from gateway.statuscodes import describe

    value = r.value
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        value = text if len(text) <= TAIL_VALUE_CHARS else text[: TAIL_VALUE_CHARS - 1] + "…"
    line = f"{rec['sourceTs']}  {safe(r.source):14} {safe(r.tag):40} {safe(value):>14} {r.quality.name:9} {rec['kind']}"
    if r.status:
        line += f"  {describe(r.status)}"
    if r.flags:
        line += f"  [{','.join(rec['flags'])}]"
    return line


def backlog_rows(store: StreamStore, positions: dict[str, dict[str, int | None]],
                 live: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """One row per (reader, stream): committed position vs the stream's tail, and the age of the oldest unsent.

    A position of None is a reader that never committed: it starts at the oldest message. ``live`` holds the
    positions running readers report in their status files ahead of what they committed (the anomaly detector
    commits only with each model save): the backlog counts from there, so a healthy reader is not flagged late."""
    rows: list[dict[str, Any]] = []
    now = time.time()
    infos: dict[str, Any] = {}
    for reader, streams in sorted(positions.items()):
        if reader in SELF_READERS:
            continue
        for stream, committed in sorted(streams.items()):
            if stream not in infos:
                try:
                    infos[stream] = store.describe(stream)
                except Exception:  # noqa: BLE001 - a deleted stream leaves positions behind; show it, do not stop
                    infos[stream] = None
            info = infos[stream]
            if info is None:
                rows.append({"reader": reader, "stream": stream, "committed": committed, "backlog": None,
                             "oldest_unsent_age_s": None, "lost": 0, "note": "stream no longer exists"})
                continue
            start = info.oldest_seq if committed is None else max(committed, info.oldest_seq)
            read_to = (live or {}).get(reader, {}).get(stream)
            ahead = read_to is not None and read_to > start
            if ahead:
                start = min(read_to or start, info.next_seq)
            backlog = max(0, info.next_seq - start)
            age = None
            if backlog:
                head = store.read(stream, start, max_count=1)
                age = round(now - head[0].ts_ms / 1000, 3) if head else None
            rows.append({"reader": reader, "stream": stream, "committed": committed, "next_seq": info.next_seq,
                         "backlog": backlog, "oldest_unsent_age_s": age,
                         "lost": 0 if committed is None else max(0, info.oldest_seq - committed),
                         "note": (f"read to {read_to}, committed at its last save" if ahead
                                  else "nothing sent yet" if committed is None else "")})
    return rows


def live_positions(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """reader -> stream -> position, from the ``inputs`` of the status files of components that are running."""
    from gateway.cli.common import pid_alive, read_statuses

    out: dict[str, dict[str, int]] = {}
    for name, status in read_statuses(args).items():
        inputs = status.get("inputs")
        if not isinstance(inputs, dict) or not pid_alive(int(status.get("pid") or 0)):
            continue  # a stopped reader resumes from what it committed: its status position means nothing now
        for stream, entry in inputs.items():
            if isinstance(entry, dict) and isinstance(entry.get("position"), int):
                out.setdefault(name, {})[stream] = entry["position"]
    return out


def reader_positions(args: argparse.Namespace, store: StreamStore) -> dict[str, dict[str, int | None]]:
    """Committed positions, plus every configured destination's streams it never committed on (None)."""
    from gateway.cli import configs
    from gateway.streams.positions import PositionStore

    out: dict[str, dict[str, int | None]] = {}
    loaded = getattr(args, "loaded_configs", None)
    if loaded is None:
        loaded, _ = configs.gather(args)
    existing = set(store.list_streams())
    for c in loaded:
        for d in getattr(c.config, "destinations", None) or []:
            for stream in d.route.streams if d.enabled else []:
                if stream in existing:
                    out.setdefault(d.name, {})[stream] = None
    folder = store_dir(args) / "positions"
    for reader, streams in (PositionStore(folder).all() if folder.is_dir() else {}).items():
        out.setdefault(reader, {}).update(streams)
    return out


def _ack_losses(args: argparse.Namespace) -> int:
    from gateway.streams.positions import PositionStore

    folder = store_dir(args) / "positions"
    done = PositionStore(folder).acknowledge() if folder.is_dir() else []
    if args.json:
        print_json(done)
    elif not done:
        print("no unacknowledged losses")
    for r in [] if args.json else done:
        print(safe(f"acknowledged {r['owner']} on {r['stream']}: {fmt_losses(r['unacknowledged'])}"))
    return EXIT_OK


def cmd_buffer(args: argparse.Namespace) -> int:
    if args.ack_losses:
        return _ack_losses(args)
    losses = unacknowledged_losses(store_dir(args))
    store = open_store(args)
    try:
        rows = backlog_rows(store, reader_positions(args, store), live_positions(args))
    finally:
        store.close()
    late = [r for r in rows if (r["oldest_unsent_age_s"] or 0) > args.max_age]
    by_key = {(r["owner"], r["stream"]): r["unacknowledged"] for r in losses}
    for r in rows:  # what the reader counted durably, even after it moved past the gap
        r["unacknowledged_losses"] = by_key.pop((r["reader"], r["stream"]), {})
        r["lost"] = max(r["lost"], int(r["unacknowledged_losses"].get("messages_lost", 0)))
    rows += [{"reader": owner, "stream": stream, "committed": None, "backlog": None, "oldest_unsent_age_s": None,
              "lost": int(counts.get("messages_lost", 0)), "unacknowledged_losses": counts, "note": "losses"}
             for (owner, stream), counts in by_key.items()]  # writers (collectors): no backlog, only losses
    if args.json:
        print_json(rows)
    elif not rows:
        print(safe(f"no reader positions under {store_dir(args) / 'positions'}: no destination has sent anything "
                   "yet"))
    else:
        print(table([[r["reader"], r["stream"], "-" if r["backlog"] is None else r["backlog"],
                      "-" if r["oldest_unsent_age_s"] is None else fmt_duration(r["oldest_unsent_age_s"]),
                      r["lost"] or "", ("LATE " if r in late else "") + r["note"]] for r in rows],
                    ["reader", "stream", "backlog msgs", "oldest unsent", "lost", ""], right={2, 3, 4}))
    if losses and not args.json:
        print("\nunacknowledged losses (cumulative; gatewayctl buffer --ack-losses once their cause is dealt with):")
        for loss in losses:
            print(safe(f"  {loss['owner']} on {loss['stream']}: {fmt_losses(loss['unacknowledged'])}"))
    return EXIT_UNHEALTHY if late or losses else EXIT_OK
