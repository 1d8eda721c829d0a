"""`make demo`: the whole gateway live against the TEP simulator, each piece its own process, as on a gateway.

simulator (OPC UA, Modbus TCP, OPC DA) -> three collectors -> streams -> anomaly detector -> publisher -> a JSON
lines file and mosquitto (mutual TLS). The plant runs 180x real time (one wall second = three simulated minutes, the
sample interval the anomaly model was evaluated at); the reactor group learns for about two minutes, and at 12 h of
simulated time (four wall minutes, well after learning) the schedule switches IDV 1 on (A/C feed ratio step) so an
alarm shows.
The screen is ``gatewayctl status --watch``: exactly what an engineer sees on a gateway. q or Ctrl-C stops all.

``python -m devkit.demo --gap`` also kills the OPC UA collector with SIGKILL a minute in and restarts it 30 s later:
the simulator historizes its tags, so the restarted collector reads the values it missed back from the server's
history (records flagged ``backfill`` in ``out/records.jsonl``; the demo counts them when it stops). The anomaly
detector then sees those late values too.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from devkit.peers import ROOT, Mosquitto, Proc, free_port, port_open, start, start_mosquitto, wait_for
from gateway.components import component

SPEED = 180
IDV_SCHEDULE = "1@12h"
OPCDA_PKI = "opcda-pki"  # the simulator's OPC DA CA, server and client certificates (--opcda-tls-dir), made once
# Reactor and separator loop: what IDV 1 moves first (NOTES 10); OPC UA node ids are the simulator's paths.
REACTOR_TAGS = [
    "Reactor/Pressure", "Reactor/Temperature", "Reactor/Level", "Separator/Temperature", "Separator/Pressure",
    "Stripper/Pressure", "Feeds/AFeed", "Feeds/ACFeed",
]
GAP_AT_S, GAP_S = 60.0, 30.0  # --gap: when the OPC UA collector is killed, and for how long
OPCUA_EXTRA = ["Separator/Level", "Stripper/Level", "Compressor/Work", "Reactor/CoolingWaterOutletTemp"]


def _modbus_tags() -> list[dict[str, Any]]:
    # XMEAS n is a float32 at input register 2*(n-1) (simulator/README.md): the stripper and purge measurements.
    return [{"name": f"XMEAS{n:02d}", "fc": 4, "address": 2 * (n - 1), "type": "float32"} for n in range(14, 23)]


def _configs(run: Path, ports: dict[str, int], broker: Mosquitto | None) -> dict[str, Path]:
    """``{component name: its configuration file}``: every component of the demo, in start order."""
    store = {"kind": "embedded", "path": str(run / "data")}
    common = {"store": store, "status_interval_s": 1}
    configs: dict[str, dict[str, Any]] = {
        "factoryedge.OpcUaCollector": {**common, "connections": [{
            "name": "tep-opcua", "endpoint": f"opc.tcp://127.0.0.1:{ports['opcua']}",
            "namespace_uri": "urn:factoryedge:tep", "nodes": ["s=" + t for t in REACTOR_TAGS + OPCUA_EXTRA],
            "publishing_interval_ms": 250, "deadband": {"heartbeat_s": 1},
        }]},
        "factoryedge.ModbusCollector": {**common, "connections": [{
            "name": "tep-modbus", "host": "127.0.0.1", "port": ports["modbus"], "scan_interval_s": 1,
            "tag_prefix": "Modbus/", "units": [{"unit_id": 1, "order": "ABCD", "tags": _modbus_tags()}],
        }]},
        "factoryedge.OpcDaCollector": {**common, "connections": [{
            "name": "tep-opcda", "host": "127.0.0.1", "port": ports["opcda"], "server": "FactoryEdge.TEP.1",
            "browse": ["Compressor.*", "ProductAnalyzer.*"], "scan_interval_s": 1, "tag_prefix": "OpcDa/",
            # mutual TLS with the certificates the simulator generates (--opcda-tls-dir): no plain OPC DA link
            "tls": {"ca_file": str(run / OPCDA_PKI / "ca.pem"), "cert_file": str(run / OPCDA_PKI / "client.pem"),
                    "key_file": str(run / OPCDA_PKI / "client.key")},
        }]},
        "factoryedge.AnomalyDetector": {
            **common, "input_streams": [component("factoryedge.OpcUaCollector").stream],
            "model_dir": str(run / "anomaly-model"), "start_from": "oldest", "save_interval_s": 30, "groups": [{
                "name": "reactor", "tags": REACTOR_TAGS, "shingle": 4, "cadence_s": 1.0, "max_age_s": 3.0,
                "training_points": 120, "false_alarm_rate": 0.005}]},
        "factoryedge.Publisher": {**common, "metrics_interval_s": 10, "destinations": [
            {"type": "file", "name": "local-file", "path": str(run / "out/records.jsonl")}]},
    }
    if broker is not None:
        configs["factoryedge.Publisher"]["destinations"].append({
            "type": "mqtt", "name": "mosquitto", "host": "127.0.0.1", "port": broker.tls_port,
            "client_id": "factoryedge-demo",
            "tls": {"ca_file": str(broker.pki.ca), "cert_file": str(broker.pki.client_cert),
                    "key_file": str(broker.pki.client_key)},
            "topic": "factoryedge/{site}/{source}/{kind}", "topic_vars": {"site": "demo-site"},
        })
    paths = {}
    for name, cfg in configs.items():
        paths[name] = run / f"{component(name).entry}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def _gap(procs: list[Proc], index: int, cmd: list[str], log: Path, stop: threading.Event) -> None:
    """--gap: SIGKILL ``procs[index]`` (the OPC UA collector) at GAP_AT_S and start it again GAP_S later."""
    if stop.wait(GAP_AT_S):
        return
    procs[index].stop(signal.SIGKILL)
    if not stop.wait(GAP_S):
        procs[index] = start(cmd, log, env={"PYTHONPATH": str(ROOT)})


def _backfilled(records: Path) -> int:
    """Records the file destination wrote flagged backfill."""
    if not records.exists():
        return 0
    with records.open(errors="replace") as lines:
        return sum('"backfill"' in line for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gap", action="store_true",
                        help=f"kill the OPC UA collector {GAP_AT_S:g} s in, restart it {GAP_S:g} s later: the gap is "
                             "read back from the simulator's history")
    args = parser.parse_args(argv)
    run = ROOT / ".run" / "demo"
    for old in ("data", "anomaly-model", "out"):
        shutil.rmtree(run / old, ignore_errors=True)  # each demo starts from an empty store and an untrained model
    run.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    broker = None
    stop_gap, gap = threading.Event(), None
    try:
        broker = start_mosquitto(run / "mosquitto")
    except RuntimeError as exc:
        print(f"demo: {exc}; continuing with the file destination only")
    plant = "tep" if importlib.util.find_spec("tep_studio") else "synthetic"
    ports = {"opcua": free_port(), "modbus": free_port(), "opcda": free_port()}
    try:
        sim = start([sys.executable, "-m", "simulator", "--plant", plant, "--speed", str(SPEED),
                     "--idv", IDV_SCHEDULE, "--status-every", "0", "--opcua-port", str(ports["opcua"]),
                     "--modbus-port", str(ports["modbus"]), "--opcda-port", str(ports["opcda"]),
                     "--opcda-tls-dir", str(run / OPCDA_PKI)],
                    run / "simulator.log")
        procs.append(sim)
        for name, port in ports.items():
            def up(p: int = port) -> bool:
                return port_open(p) or sim.popen.poll() is not None

            wait_for(up, 120, f"the simulator's {name}")
        if sim.popen.poll() is not None:
            print(f"demo: the simulator exited:\n{sim.output()[-2000:]}")
            return 1
        paths = _configs(run, ports, broker)
        for name, path in paths.items():
            spec = component(name)
            cmd, log = [sys.executable, "-m", spec.entry_module, "--config", str(path)], run / f"{spec.entry}.log"
            procs.append(start(cmd, log, env={"PYTHONPATH": str(ROOT)}))
            if args.gap and name == "factoryedge.OpcUaCollector":
                gap = threading.Thread(target=_gap, args=(procs, len(procs) - 1, cmd, log, stop_gap), daemon=True)
                gap.start()
        print(f"demo: {plant} plant at {SPEED}x real time, IDV {IDV_SCHEDULE.replace('@', ' on at ')} simulated; "
              f"configs and logs in {run}; records in {run / 'out/records.jsonl'}")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        from gateway.cli.main import main as gatewayctl

        try:
            return gatewayctl(["--store", str(run / "data"), "status", "--watch", "--interval", "1"])
        except KeyboardInterrupt:
            return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        print("demo: stopping")
        stop_gap.set()
        if gap is not None:
            gap.join(15)
        for p in reversed(procs):
            p.stop()
        if gap is not None:
            print(f"demo: {_backfilled(run / 'out/records.jsonl')} values read back from the simulator's history "
                  f"after the OPC UA collector's {GAP_S:g} s outage (flagged backfill in {run / 'out/records.jsonl'})")
        if broker:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
