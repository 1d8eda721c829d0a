"""`make soak`: a self-contained chaos run of the whole gateway on 127.0.0.1 that writes ``bench/soak.json``.

Countable sources (bench/soak_sources.py) feed a Modbus and an OPC UA collector; the anomaly detector scores both;
the publisher delivers every stream to a file, to mosquitto (mutual TLS, QoS 1) and to kinesalite, the two last
through fault proxies, as the collectors reach their sources through theirs. For ``--minutes`` (``SOAK_MINUTES``,
default 20) the soak, at random moments:

- kills a running component with SIGKILL (about 3.3 a minute: 66 in 20 minutes) and restarts it after 0.5-3 s,
  as a supervisor would, and kills every component at once, once;
- blackholes and resets each link (both sources, the broker, Kinesis), and restarts the broker once;
- fills a RejectNewData and an OverwriteOldestData stream (two more Modbus collectors with 16 KiB streams), and
  counts the drops each applied;
- fills the file destination's disk (a 32 MiB tmpfs; skipped, with a message, where mount is not permitted),
  frees it and checks delivery resumes.

Then it heals every link, stops the collectors, waits for the publisher to drain, and reckons (soak_count.py) per
destination: stored, delivered, lost, duplicates, out of order; per source the gaps, and the drops of each strategy.
What must hold: ``soak.*.lost`` = 0, ``soak.duplicates_max`` <= ``soak.kills`` + 1, ``soak.crash_loops`` = 0.
Evidence (component logs, lost ids, unexpected exits) stays in the run folder printed at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.soak_count import file_lines, gaps, reckon, stored_records
from bench.soak_rig import SMALL_STREAM, STREAMS, Rig
from devkit.kinesis_peer import gateway_records
from devkit.peers import ROOT, RecordSubscriber, wait_for
from gateway.streams import PositionStore
from gateway.streams.embedded import EmbeddedStore

LINKS = ("modbus", "opcua", "mqtt", "kinesis")
KILLS_PER_MINUTE = 3.3
Event = tuple[float, str, str]  # (seconds after start, action, argument)


def plan(minutes: float, rng: random.Random) -> list[Event]:
    """The run's timeline: every kind of fault at least once, at random moments."""
    end = minutes * 60

    def at(lo: float, hi: float) -> float:  # a moment between two fractions of the run
        return rng.uniform(lo * end, hi * end)

    events: list[Event] = [(at(0.08, 0.95), "kill", "") for _ in range(max(6, round(KILLS_PER_MINUTE * minutes)))]
    events += [(at(0.1, 0.4), "stream-full", ""), (at(0.3, 0.6), "disk-full", ""),
               (at(0.4, 0.8), "broker-restart", ""), (at(0.5, 0.85), "kill-all", "")]
    # each link gets a blackhole and a reset in every slot of its own: faults of one link never overlap
    rounds = max(1, round(minutes / 7))
    for link in LINKS:
        slots = [("blackhole", r) for r in range(rounds)] + [("reset", r) for r in range(rounds)]
        rng.shuffle(slots)
        width = 0.85 / len(slots)
        for i, (fault, _) in enumerate(slots):
            start = end * (0.05 + i * width) + rng.uniform(0, end * width / 3)
            length = min(end * width / 2, rng.uniform(3, 4 + minutes))
            events += [(start, fault, link), (start + length, "pass", link)]
    return sorted(events)


class Soak:
    def __init__(self, rig: Rig, minutes: float) -> None:
        self.rig = rig
        self.minutes = minutes
        self.notes: list[str] = []
        self.metrics: dict[str, float] = {}
        self.phases: list[threading.Thread] = []
        self.sub: RecordSubscriber | None = None

    def run(self) -> None:
        rig, sup = self.rig, self.rig.supervisor
        rig.start_peers()
        assert rig.broker is not None
        self.sub = RecordSubscriber(rig.broker.as_peer(), "soak/#", "soak-sub")
        self.sub._client.reconnect_delay_set(1, 2)  # back soon after the broker restart (paho default: 120 s)
        for c in (rig.modbus_collector("mb", {"name": "soak-modbus"}), rig.opcua_collector(),
                  rig.anomaly_detector(), rig.publisher()):
            sup.add(c)
        wait_for(lambda: all(rig.destination(d).get("records_sent", 0) > 0 for d in ("file", "mqtt", "kinesis")),
                 120, "first records at every destination")
        t0 = time.monotonic()
        for when, action, arg in plan(self.minutes, rig.rng):
            delay = t0 + when - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the chaos timeline's pace, not synchronisation
            self._do(action, arg)
        for phase in self.phases:
            phase.join()

    def _do(self, action: str, arg: str) -> None:
        rig, sup = self.rig, self.rig.supervisor
        if action == "kill":
            running = sup.running()
            if running:
                sup.kill(rig.rng.choice(running))
        elif action == "kill-all":
            for name in sup.running():
                sup.kill(name)
        elif action in ("blackhole", "reset"):
            getattr(rig.proxies[arg], action)()
            self.metrics[f"soak.faults.{arg}.{action}"] = self.metrics.get(f"soak.faults.{arg}.{action}", 0) + 1
        elif action == "pass":
            rig.proxies[arg].pass_through()
        elif action == "broker-restart":
            assert rig.broker is not None
            rig.broker.restart()
            self.metrics["soak.broker_restarts"] = 1
        elif action in ("stream-full", "disk-full"):
            phase = self._stream_full if action == "stream-full" else self._disk_full
            thread = threading.Thread(target=self._guarded, args=(phase,), name=f"soak-{action}", daemon=True)
            thread.start()
            self.phases.append(thread)

    def _guarded(self, phase: Any) -> None:
        try:
            phase()
        except TimeoutError as exc:  # a phase that did not see what it waited for is a finding, not a crash
            self.notes.append(f"{phase.__name__}: {exc}")
            self.metrics[f"soak.{phase.__name__.strip('_')}.incomplete"] = 1

    def _stream_full(self) -> None:
        """Two more collectors, each on a 16 KiB stream, read fast while the publisher is down (RejectNewData only
        refuses while readers have not committed) until both strategies have applied."""
        rig, sup = self.rig, self.rig.supervisor
        sup.hold("publisher")
        store = EmbeddedStore(rig.data)
        for name, stream, strategy in (("mb-reject", "soak-reject", "RejectNewData"),
                                       ("mb-overwrite", "soak-overwrite", "OverwriteOldestData")):
            sup.add(rig.modbus_collector(name, {"name": stream, "strategy_on_full": strategy, **SMALL_STREAM},
                                         fast=True))

        def applied() -> bool:
            names = set(store.list_streams())
            return ({"soak-reject", "soak-overwrite"} <= names
                    and store.describe("soak-reject").rejected_appends > 0
                    and store.describe("soak-overwrite").dropped_messages > 0)

        try:
            wait_for(applied, 120, "both full streams to apply their strategy", interval=0.2)
        finally:
            for name in ("mb-reject", "mb-overwrite"):
                sup.retire(name)
            sup.release("publisher")

    def _disk_full(self) -> None:
        """Fill the file destination's tmpfs, see the destination fail and retry, free it, see delivery resume."""
        rig = self.rig
        if not rig.tmpfs:
            self.notes.append(rig.tmpfs_message)
            self.metrics["soak.disk_full.skipped"] = 1
            return
        filler = rig.out / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (2**20, 4096, 1):  # unbuffered, down to the last byte
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        try:
            wait_for(lambda: "space" in rig.destination("file").get("last_error", ""), 60,
                     "the file destination to fail on the full disk", interval=0.1)
            self.metrics["soak.disk_full.seen"] = 1
            time.sleep(rig.rng.uniform(2, 5))  # how long the disk stays full: chaos timing, not synchronisation
        finally:
            filler.unlink()
        sent = rig.destination("file").get("records_sent", 0)
        wait_for(lambda: rig.destination("file").get("records_sent", 0) not in (0, sent)
                 and not rig.destination("file").get("last_error"), 60, "file delivery to resume", interval=0.1)
        self.metrics["soak.disk_full.resumed"] = 1

    def drain(self) -> None:
        """Heal every link, stop the producers, and wait for the publisher to deliver every stream to the end."""
        rig, sup = self.rig, self.rig.supervisor
        for proxy in rig.proxies.values():
            proxy.pass_through()
        wait_for(lambda: all(c.retired or c.alive() for c in sup.components.values()), 60,
                 "every killed component to be back")
        for name in ("mb", "ua", "anomaly"):
            code = sup.retire(name)
            if code not in (0, None):
                self.notes.append(f"{name} exited {code} on SIGTERM")
                self.metrics["soak.unclean_stops"] = self.metrics.get("soak.unclean_stops", 0) + 1
        store, positions = EmbeddedStore(rig.data), PositionStore(rig.data / "positions")

        def drained() -> bool:
            ends = {s: store.describe(s).next_seq for s in store.list_streams() if s in STREAMS}
            return all((positions.get(d, s) or 0) >= end for d in ("file", "mqtt", "kinesis")
                       for s, end in ends.items())

        try:
            wait_for(drained, 300, "the publisher to drain every stream", interval=0.2)
        except TimeoutError as exc:
            self.notes.append(str(exc))
            self.metrics["soak.drain_timeout"] = 1
        stored = stored_records(rig.data, STREAMS)
        ids = {r.id for records in stored.values() for r in records}
        assert self.sub is not None
        try:
            wait_for(lambda: {r["id"] for r in list(self.sub.received)} >= ids, 60,  # type: ignore[union-attr]
                     "the MQTT subscriber to receive every stored record", interval=0.2)
        except TimeoutError as exc:
            self.notes.append(str(exc))
        sup.retire("publisher")

    def reckon(self) -> dict[str, Any]:
        rig, sup = self.rig, self.rig.supervisor
        assert self.sub is not None and rig.kinesalite is not None
        stored = stored_records(rig.data, STREAMS)
        file_records, torn = file_lines(rig.out, "records.jsonl")
        torn_lines = [t[:600] for t in torn[:5]]
        lost_ids: dict[str, list[str]] = {}
        m = self.metrics
        for name, delivered in (("file", file_records), ("mqtt", list(self.sub.received)),
                                ("kinesis", gateway_records(rig.kinesalite.endpoint_url, "soak"))):
            result = reckon(name, stored, delivered)
            m.update(result["metrics"])
            lost_ids[name] = result["lost_ids"]
        m["soak.file.torn_lines"] = len(torn)
        m["soak.lost"] = sum(m[f"soak.{d}.lost"] for d in ("file", "mqtt", "kinesis"))
        m["soak.duplicates_max"] = max(m[f"soak.{d}.duplicates_max"] for d in ("file", "mqtt", "kinesis"))
        m["soak.kills"] = sup.kills
        for name, n in sup.kills_by_component.items():
            m[f"soak.kills.{name}"] = n
        m["soak.crash_loops"] = len(sup.crash_loops)
        m["soak.unexpected_exits"] = len(sup.unexpected_exits)
        for stream, source in (("soak-modbus", "modbus"), ("soak-opcua", "opcua")):
            for key, value in gaps(stored[stream]).items():
                m[f"soak.source.{source}.{key}"] = value
        store = EmbeddedStore(rig.data)
        for stream in ("soak-reject", "soak-overwrite"):
            if stream in store.list_streams():
                info = store.describe(stream)
                m[f"soak.{stream}.rejected_appends"] = info.rejected_appends
                m[f"soak.{stream}.dropped_messages"] = info.dropped_messages
        for stream in STREAMS:
            m[f"soak.stream.{stream}.stored"] = len(stored[stream])
        m["soak.minutes"] = self.minutes
        return {"lost_ids": lost_ids, "file_torn_lines": torn_lines, "unexpected_exits": sup.unexpected_exits,
                "crash_loops": sup.crash_loops, "notes": self.notes}


def run(minutes: float, out: Path, run_dir: Path, seed: int | None = None) -> dict[str, float]:
    """Run the soak in ``run_dir``; write the metrics to ``out`` and the evidence to ``run_dir/soak-report.json``."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rig = Rig(run_dir, random.Random(seed))
    soak = Soak(rig, minutes)
    try:
        soak.run()
        soak.drain()
        report = soak.reckon()
    finally:
        if soak.sub is not None:
            soak.sub.stop()
        rig.close()
    soak.metrics["soak.seed"] = seed
    metrics = dict(sorted(soak.metrics.items()))
    out.write_text(json.dumps(metrics, indent=1) + "\n")
    (run_dir / "soak-report.json").write_text(json.dumps({"metrics": metrics, **report}, indent=1) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chaos soak of the whole gateway on 127.0.0.1.")
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "20")))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.json")
    parser.add_argument("--seed", type=int, default=None, help="Replay the timeline of an earlier run.")
    parser.add_argument("--keep", action="store_true", help="Keep the run folder even when everything held.")
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="factoryedge-soak-"))
    metrics = run(args.minutes, args.out, run_dir, args.seed)
    held = metrics["soak.lost"] == 0 and metrics["soak.crash_loops"] == 0 \
        and metrics["soak.duplicates_max"] <= metrics["soak.kills"] + 1
    print(json.dumps(metrics, indent=1))
    if held and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"evidence kept in {run_dir} (soak-report.json, logs/)", file=sys.stderr)
    print(f"soak {'held' if held else 'FAILED'}: lost {metrics['soak.lost']:g}, crash loops "
          f"{metrics['soak.crash_loops']:g}, most duplicates of one id {metrics['soak.duplicates_max']:g} "
          f"after {metrics['soak.kills']:g} kills", file=sys.stderr)
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
