"""The demo: simulator -> OPC UA collector -> stream -> publisher -> mosquitto and JSON lines, shown live.

Every piece runs as its own process, as on a gateway; the screen is built from the components' status files and
the streams, exactly what ``gatewayctl status`` reads.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.dev.peers import ROOT, Mosquitto, Proc, free_port, port_open, start, start_mosquitto, wait_for
from gateway.streams.embedded import EmbeddedStore

DEMO_TAGS = [
    "Reactor/Pressure", "Reactor/Temperature", "Reactor/Level", "Separator/Level", "Stripper/Level",
    "ProductAnalyzer/G", "Reactor/FeedRate", "Reactor/CoolingWaterValve", "Compressor/Work", "Compressor/PurgeRate",
]


def _configs(run: Path, opcua_port: int, broker: Mosquitto | None) -> tuple[Path, Path]:
    store = {"kind": "embedded", "path": str(run / "data")}
    collector = {
        "store": store, "status_interval_s": 1,
        "connections": [{
            "name": "tep-opcua", "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}",
            "namespace_uri": "urn:factoryedge:tep", "nodes": ["s=" + t for t in DEMO_TAGS],
            "publishing_interval_ms": 500, "tag_prefix": "/demo-site/area1/tep/",
        }],
    }
    destinations: list[dict[str, Any]] = [
        {"type": "file", "name": "local-file", "path": str(run / "out/records.jsonl")}
    ]
    if broker is not None:
        destinations.append({
            "type": "mqtt", "name": "mosquitto", "host": "127.0.0.1", "port": broker.tls_port,
            "client_id": "factoryedge-demo",
            "tls": {"ca_file": str(broker.pki.ca), "cert_file": str(broker.pki.client_cert),
                    "key_file": str(broker.pki.client_key)},
            "topic": "factoryedge/{site}/{source}/{kind}", "topic_vars": {"site": "demo-site"},
        })
    publisher = {"store": store, "destinations": destinations, "metrics_interval_s": 10, "status_interval_s": 1}
    paths = run / "collector.yaml", run / "publisher.yaml"
    for path, cfg in zip(paths, (collector, publisher), strict=True):
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def _status(run: Path, name: str) -> dict[str, Any]:
    try:
        return dict(json.loads((run / "data" / "status" / f"{name}.json").read_text()))
    except (OSError, ValueError):
        return {}


def _screen(run: Path, t0: float, last: dict[str, float]) -> str:
    col = _status(run, "factoryedge.OpcUaCollector").get("connections", {})
    pub = _status(run, "factoryedge.Publisher").get("destinations", {})
    store = EmbeddedStore(run / "data")
    lines = [f"factory-edge-gateway demo — {time.time() - t0:6.0f} s — Ctrl-C to stop", ""]
    lines.append(f"{'IN  connection':28}{'connected':>10}{'read':>10}{'written':>10}{'/s':>8}{'errors':>8}")
    for name, c in col.items():
        rate = max(0, c["values_written"] - last.get(f"in:{name}", c["values_written"]))
        last[f"in:{name}"] = c["values_written"]
        lines.append(f"    {name:24}{c['connected']!s:>10}{c['values_read']:>10}{c['values_written']:>10}"
                     f"{rate:>8}{c['read_errors']:>8}")
    lines += ["", f"{'STREAM':28}{'messages':>10}{'bytes':>12}{'dropped':>9}"]
    for name in store.list_streams():
        info = store.describe(name)
        lines.append(f"    {name:24}{info.message_count:>10}{info.total_bytes:>12}{info.dropped_messages:>9}")
    header = f"{'OUT destination':28}{'sent':>10}{'/s':>8}{'backlog':>9}{'oldest s':>10}{'retries':>9}  last error"
    lines += ["", header]
    for name, d in pub.items():
        rate = max(0, d["records_sent"] - last.get(f"out:{name}", d["records_sent"]))
        last[f"out:{name}"] = d["records_sent"]
        lines.append(f"    {name:24}{d['records_sent']:>10}{rate:>8}{d['backlog_messages']:>9}"
                     f"{d['oldest_unsent_age_s']:>10.1f}{d['retries']:>9}  {d['last_error'][:40]}")
    store.close()
    return "\n".join(lines)


def main() -> int:
    run = ROOT / ".run" / "demo"
    shutil.rmtree(run / "data", ignore_errors=True)  # each demo starts from an empty store
    run.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    broker = None
    try:
        broker = start_mosquitto(run / "mosquitto")
    except RuntimeError as exc:
        print(f"demo: {exc}; continuing with the file destination only")
    plant = "tep" if importlib.util.find_spec("tep_studio") else "synthetic"
    port = free_port()
    sim = start([sys.executable, "-m", "simulator", "--plant", plant, "--endpoints", "opcua", "--opcua-port",
                 str(port), "--speed", "10", "--status-every", "0"], run / "simulator.log")
    procs.append(sim)
    wait_for(lambda: port_open(port) or sim.popen.poll() is not None, 120, "the simulator")
    collector_cfg, publisher_cfg = _configs(run, port, broker)
    env = {"PYTHONPATH": str(ROOT)}
    procs.append(start([sys.executable, "components/opcua_collector/main.py", "--config", str(collector_cfg)],
                       run / "collector.log", env=env))
    procs.append(start([sys.executable, "components/publisher/main.py", "--config", str(publisher_cfg)],
                       run / "publisher.log", env=env))
    print(f"demo: simulator ({plant} plant, 10x real time) on opc.tcp://127.0.0.1:{port}; logs in {run}")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0, last = time.time(), dict[str, float]()
    try:
        while True:
            for p in procs:
                if p.popen.poll() is not None:
                    print(f"demo: a process exited ({p.log.name}):\n{p.output()[-2000:]}")
                    return 1
            print("\033[2J\033[H" + _screen(run, t0, last), flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        print("\ndemo: stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        for p in reversed(procs):
            p.stop()
        if broker:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
