"""``gatewayctl replay STREAM --from T --to T --destination NAME``: re-send a time range to one destination.

Records are selected by their source timestamp and by the destination's own route (tags, kinds), and delivered
through the destination module's send path, like the publisher does. The destination's stream position is never
touched: the running publisher carries on where it was. Consumers drop the duplicates by record id. An MQTT
destination connects with ``<client_id>-replay`` so that it does not take the running publisher's session over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from gateway.cli.common import EXIT_OK, EXIT_UNHEALTHY, open_store, parse_time, safe
from gateway.errors import ConfigError, DestinationError

# An append happens after the values were read, so a message ingested before the range starts can only hold
# in-range records if the source clock runs ahead; this margin covers a source clock that far ahead.
CLOCK_MARGIN_MS = 10 * 60 * 1000


def register(subparsers: Any) -> None:
    replay = subparsers.add_parser(
        "replay", help="re-send a time range of a stream to one destination (positions untouched)",
        description="Examples:\n  gatewayctl replay factoryedge-opcua --from now-2h --to now-1h --destination cloud\n"
        "  gatewayctl replay factoryedge-opcua --from 2026-11-22T01:00:00Z --to 2026-11-22T02:00:00Z "
        "--destination plant-broker --json\n"
        "Times: ISO 8601 (UTC unless given), epoch seconds, now, now-10m, now-2h, now-1d.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("stream")
    replay.add_argument("--from", dest="start", required=True, metavar="T", help="first source timestamp to send")
    replay.add_argument("--to", dest="end", default="now", metavar="T", help="last source timestamp (default now)")
    replay.add_argument("--destination", required=True, help="destination name in the publisher's configuration")
    replay.add_argument("--batch", type=int, default=1000, help="records per send (default 1000)")
    replay.add_argument("--retries", type=int, default=5, help="retries of a retryable failure before giving up")
    replay.set_defaults(func=cmd_replay)


def _destination(args: argparse.Namespace) -> Any:
    from gateway.cli import configs

    loaded, _ = configs.gather(args)
    publisher = [c for c in loaded if c.component == "factoryedge.Publisher"]
    if not publisher:
        raise ConfigError("no publisher configuration to take the destination from",
                          fix="pass --config publisher.yaml (or run gatewayctl where the publisher runs)")
    if not publisher[0].ok:
        raise ConfigError(f"the publisher configuration {publisher[0].origin} is invalid",
                          problems=publisher[0].problems)
    dests = {d.name: d for d in publisher[0].config.destinations}
    if args.destination not in dests:
        raise ConfigError(f"no destination {args.destination!r} in {publisher[0].origin}",
                          fix=f"use one of {', '.join(dests) or '(none configured)'}")
    cfg = dests[args.destination]
    if "client_id" in type(cfg).model_fields:
        cfg = cfg.model_copy(update={"client_id": f"{cfg.client_id}-replay"})
    return cfg


class Progress:
    """A progress bar on a TTY, JSON lines with ``--json``, nothing otherwise."""

    def __init__(self, json_lines: bool, stream: TextIO) -> None:
        self.json_lines = json_lines
        self.bar = stream.isatty() and not json_lines
        self.stream = stream
        self._last = 0.0

    def __call__(self, done: int, total: int, sent: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        if self.json_lines:
            print(json.dumps({"progress": {"messages_done": done, "messages_total": total, "records_sent": sent}}),
                  flush=True)
        elif self.bar:
            share = done / total if total else 1.0
            filled = int(share * 40)
            self.stream.write(f"\r[{'#' * filled}{'.' * (40 - filled)}] {share:4.0%} {sent} records sent")
            if final:
                self.stream.write("\n")
            self.stream.flush()


async def _deliver(sink: Any, records: list[Any], retries: int) -> tuple[int, list[tuple[Any, str]]]:
    """Send with retries; isolate records refused for good by splitting. Returns (accepted, rejected)."""
    attempt = 0
    while True:
        try:
            result = await sink.send(records)
            return len(records) - len(result.rejected), list(result.rejected)
        except DestinationError as exc:
            if not exc.retryable:
                if len(records) == 1:
                    return 0, [(records[0], str(exc))]
                mid = len(records) // 2
                a, ra = await _deliver(sink, records[:mid], retries)
                b, rb = await _deliver(sink, records[mid:], retries)
                return a + b, ra + rb
            attempt += 1
            if attempt > retries:
                raise
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt))


async def replay(args: argparse.Namespace, cfg: Any, progress: Progress) -> dict[str, Any]:
    from gateway.codec import decode_batch
    from gateway.destinations.base import CLOSE_TIMEOUT_S, Router
    from gateway.errors import CodecError

    start_ns, end_ns = parse_time(args.start), parse_time(args.end)
    if end_ns < start_ns:
        raise ConfigError(f"--to {args.end} is before --from {args.start}", fix="swap them")
    store = open_store(args)
    info = store.describe(args.stream)
    router = Router(cfg.route)
    sink = cfg.build()
    await sink.start()
    t0 = time.monotonic()
    scanned = matched = sent = corrupt = 0
    rejected: list[tuple[Any, str]] = []
    pending: list[Any] = []
    total = info.next_seq - info.oldest_seq
    position = info.oldest_seq
    try:
        while position < info.next_seq:
            messages = store.read(args.stream, position, max_count=min(200, info.next_seq - position))
            if not messages:
                break
            for msg in messages:
                position = msg.seq + 1
                scanned += 1
                if msg.ts_ms * 1_000_000 < start_ns - CLOCK_MARGIN_MS * 1_000_000:
                    continue
                try:
                    records = decode_batch(msg.payload)
                except CodecError as exc:  # poison: skipped and counted, the replay goes on
                    corrupt += 1
                    if corrupt == 1:
                        print(safe(f"gatewayctl replay: skipped message {msg.seq}: {exc}"), file=sys.stderr)
                    continue
                for r in records:
                    if start_ns <= r.source_ts_ns <= end_ns and router.wants(r):
                        pending.append(r)
                        matched += 1
                while len(pending) >= args.batch:
                    ok, bad = await _deliver(sink, pending[: args.batch], args.retries)
                    sent, pending = sent + ok, pending[args.batch :]
                    rejected += bad
            progress(position - info.oldest_seq, total, sent)
        if pending:
            ok, bad = await _deliver(sink, pending, args.retries)
            sent += ok
            rejected += bad
    finally:
        await sink.close(CLOSE_TIMEOUT_S)
        store.close()
    progress(total, total, sent, final=True)
    return {"stream": args.stream, "destination": cfg.name, "from_ns": start_ns, "to_ns": end_ns,
            "messages_scanned": scanned, "messages_corrupt": corrupt, "records_matched": matched, "records_sent": sent,
            "records_rejected": len(rejected), "rejections": sorted({why for _, why in rejected})[:10],
            "seconds": round(time.monotonic() - t0, 3)}


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _destination(args)
    try:
        summary = asyncio.run(replay(args, cfg, Progress(args.json, sys.stderr)))
    except DestinationError as exc:
        print(safe(f"gatewayctl replay: gave up: {exc}"), file=sys.stderr)
        return EXIT_UNHEALTHY
    if args.json:
        print(json.dumps({"done": summary}))
    else:
        print(safe(f"replayed {summary['records_sent']} of {summary['records_matched']} records from {args.stream} "
                   f"to {cfg.name} in {summary['seconds']} s ({summary['messages_scanned']} messages scanned)"))
        for why in summary["rejections"]:  # services quote tags and aliases in their reasons
            print(f"  rejected: {safe(why)}", file=sys.stderr)
    return EXIT_OK if not summary["records_rejected"] else EXIT_UNHEALTHY
