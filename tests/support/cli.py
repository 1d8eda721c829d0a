"""gatewayctl in this process, and a local gateway pipeline for it to look at: simulator -> OPC UA collector ->
stream -> publisher -> file + MQTT, every component its own process, the way a gateway runs without Greengrass."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.peers import ROOT, Proc, start
from gateway.cli.main import main

TAGS = ["Reactor/Pressure", "Reactor/Temperature", "Stripper/Level"]


class Pipeline:
    """Components of one local gateway sharing ``root/data``; each started and stopped by pid."""

    def __init__(self, root: Path, sim_port: int) -> None:
        self.root = root
        self.sim_port = sim_port
        self.store = root / "data"
        self.procs: dict[str, Proc] = {}

    def collector_config(self, nodes: list[str] | None = None, **stream: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "store": {"kind": "embedded", "path": str(self.store)}, "status_interval_s": 0.2,
            "connections": [{"name": "tep", "endpoint": f"opc.tcp://127.0.0.1:{self.sim_port}",
                             "namespace_uri": "urn:factoryedge:tep", "nodes": nodes or [f"s={t}" for t in TAGS],
                             "publishing_interval_ms": 100, "flush_interval_s": 0.1}],
        }
        if stream:
            cfg["stream"] = {"name": "factoryedge-opcua", **stream}
        return cfg

    def publisher_config(self, mqtt_port: int | None) -> dict[str, Any]:
        dests: list[dict[str, Any]] = [{"type": "file", "name": "file", "path": str(self.root / "out.jsonl"),
                                        "route": {"streams": ["factoryedge-opcua"]}}]
        if mqtt_port:
            dests.append({"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": mqtt_port,
                          "client_id": f"cli-{mqtt_port}", "retry_max_s": 1.0,
                          "route": {"streams": ["factoryedge-opcua"]}})
        return {"store": {"kind": "embedded", "path": str(self.store)}, "status_interval_s": 0.2,
                "metrics_interval_s": 3600, "destinations": dests}

    def write_config(self, name: str, cfg: dict[str, Any]) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, component: str, cfg: dict[str, Any]) -> Proc:
        name = "collector" if component == "opcua_collector" else component
        path = self.write_config(name, cfg)
        proc = start([sys.executable, f"components/{component}/main.py", "--config", str(path)],
                     self.root / f"{name}.log", env={"PYTHONPATH": str(ROOT)})
        self.procs[name] = proc
        return proc

    def status(self, component: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.store / "status" / f"{component}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def connection(self) -> dict[str, Any]:
        return dict(self.status("factoryedge.OpcUaCollector").get("connections", {}).get("tep", {}))

    def destination(self, name: str) -> dict[str, Any]:
        return dict(self.status("factoryedge.Publisher").get("destinations", {}).get(name, {}))

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run gatewayctl in this process; (exit code, stdout)."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def cli_err(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run gatewayctl in this process; (exit code, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def findings(out: str) -> dict[str, dict[str, Any]]:
    """doctor --json output keyed by '<section>/<check>'."""
    return {f"{c['section']}/{c['check']}": c for c in json.loads(out)["checks"]}
