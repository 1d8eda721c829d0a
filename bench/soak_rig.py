"""The soak's rig: peers, links and gateway components as processes on 127.0.0.1, and a supervisor that restarts
what was killed and notices crash loops. Every process is started and stopped by PID (devkit/peers.py).

A component that exits on its own (not killed by the soak) within ``QUICK_EXIT_S`` of its start ``CRASH_LOOP_RUNS``
times in a row is a crash loop: a process that cannot come back up after a kill is the failure a supervisor (the
Greengrass nucleus) would only paper over with restarts.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devkit.faultproxy import FaultProxy
from devkit.kinesis_peer import TEST_CREDENTIALS, Kinesalite, create_stream, start_kinesalite
from devkit.peers import (
    ROOT,
    Mosquitto,
    Proc,
    free_port,
    make_pki,
    mosquitto_binary,
    port_open,
    start,
    wait_for,
)
from gateway.streams.embedded import EmbeddedStore

QUICK_EXIT_S = 10.0
CRASH_LOOP_RUNS = 3
RESTART_DELAY_S = (0.5, 3.0)
KINESIS_STREAM = "soak"
STREAMS = {  # stream -> the collector writing it
    "soak-modbus": "mb", "soak-opcua": "ua", "factoryedge-anomaly": "anomaly",
    "soak-reject": "mb-reject", "soak-overwrite": "mb-overwrite",
}
SMALL_STREAM = {"max_size_bytes": 16 * 1024, "segment_size_bytes": 2048}


@dataclass
class Component:
    """One gateway component the supervisor keeps running (unless retired)."""

    name: str
    cmd: list[str]
    log: Path
    cwd: Path
    env: dict[str, str]
    proc: Proc | None = None
    started: float = 0.0
    restart_at: float | None = None
    quick_exits: int = 0
    retired: bool = False
    held: bool = False  # killed and kept down until released (an outage of that component)
    starts: int = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None


@dataclass
class Supervisor:
    """Restarts killed components after a random short delay; counts kills, unexpected exits and crash loops."""

    rng: random.Random
    components: dict[str, Component] = field(default_factory=dict)
    kills: int = 0
    kills_by_component: dict[str, int] = field(default_factory=dict)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    crash_loops: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="soak-supervisor", daemon=True)
        self._thread.start()

    def add(self, c: Component) -> None:
        with self.lock:
            self.components[c.name] = c
            self._launch(c)

    def kill(self, name: str) -> bool:
        """SIGKILL one running component and schedule its restart; False if it was not running."""
        with self.lock:
            c = self.components.get(name)
            if c is None or c.retired or not c.alive():
                return False
            assert c.proc is not None
            c.proc.stop(signal.SIGKILL)
            self.kills += 1
            self.kills_by_component[name] = self.kills_by_component.get(name, 0) + 1
            c.restart_at = time.monotonic() + self.rng.uniform(*RESTART_DELAY_S)
            return True

    def hold(self, name: str) -> None:
        """Kill a component (SIGKILL, counted) and keep it down until :meth:`release`."""
        self.kill(name)
        with self.lock:
            self.components[name].held = True

    def release(self, name: str) -> None:
        with self.lock:
            c = self.components[name]
            c.held = False
            c.restart_at = time.monotonic()

    def running(self) -> list[str]:
        with self.lock:
            return [n for n, c in self.components.items() if not c.retired and c.alive()]

    def retire(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Stop a component for good (its phase is over, or the run drains)."""
        with self.lock:
            c = self.components.get(name)
            if c is None:
                return None
            c.retired = True
            return c.proc.stop(sig, timeout=30) if c.proc is not None else None

    def stop_all(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(5)
        for name in list(self.components):
            self.retire(name)

    def _launch(self, c: Component) -> None:
        c.proc = start(c.cmd, c.log, env=c.env, cwd=c.cwd)
        c.started, c.restart_at = time.monotonic(), None
        c.starts += 1

    def _loop(self) -> None:
        while not self._halt.wait(0.1):  # the supervisor's pace, as a nucleus polls its children
            with self.lock:
                for c in self.components.values():
                    self._check(c)

    def _check(self, c: Component) -> None:
        if c.retired or c.held:
            return
        now = time.monotonic()
        if c.restart_at is None and c.proc is not None and c.proc.popen.poll() is not None:
            # exited and nobody killed it: a crash
            lived = now - c.started
            tail = c.proc.output()[-2000:]
            self.unexpected_exits.append({"component": c.name, "code": c.proc.popen.returncode,
                                          "lived_s": round(lived, 2), "log_tail": tail})
            c.quick_exits = c.quick_exits + 1 if lived < QUICK_EXIT_S else 0
            if c.quick_exits >= CRASH_LOOP_RUNS:
                self.crash_loops.append(c.name)
                c.quick_exits = 0
            c.restart_at = now + self.rng.uniform(*RESTART_DELAY_S)
        elif c.restart_at is not None and now >= c.restart_at:
            self._launch(c)
        elif c.alive() and now - c.started >= QUICK_EXIT_S:
            c.quick_exits = 0


class Broker:
    """mosquitto with persistence, so that a restart keeps the subscriber's session and its queued messages."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pki = make_pki(folder / "pki")
        self.port, self.tls_port = free_port(), free_port()
        (folder / "db").mkdir(exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"""
user root
persistence true
persistence_location {folder / 'db'}/
autosave_interval 1
log_dest stdout
per_listener_settings true
max_inflight_messages 0
max_queued_messages 1000000
listener {self.port} 127.0.0.1
allow_anonymous true
listener {self.tls_port} 127.0.0.1
allow_anonymous true
cafile {self.pki.ca}
certfile {self.pki.server_cert}
keyfile {self.pki.server_key}
require_certificate true
use_identity_as_username true
""")
        self.proc = self._start()

    def _start(self) -> Proc:
        proc = start([mosquitto_binary(), "-c", str(self.conf)], self.folder / "mosquitto.log")
        wait_for(lambda: port_open(self.tls_port) or proc.popen.poll() is not None, 20, "mosquitto to listen")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {proc.output()[-2000:]}")
        return proc

    def restart(self) -> None:
        """A clean restart (SIGTERM saves the persistence file), on the same ports."""
        self.proc.stop()
        wait_for(lambda: not port_open(self.tls_port), 20, "mosquitto to close its port")
        self.proc = self._start()

    def as_peer(self) -> Mosquitto:
        return Mosquitto(self.proc, self.port, self.tls_port, self.pki)

    def stop(self) -> None:
        self.proc.stop()


class Rig:
    """Everything the soak runs, in ``run_dir``; ``close`` stops all of it by PID."""

    def __init__(self, run_dir: Path, rng: random.Random, step_s: float = 0.25) -> None:
        self.run = run_dir
        self.data = run_dir / "data"
        self.out = run_dir / "out"
        self.rng = rng
        self.step_s = step_s
        self.peers: list[Proc] = []
        self.proxies: dict[str, FaultProxy] = {}
        self.supervisor = Supervisor(rng)
        self.broker: Broker | None = None
        self.kinesalite: Kinesalite | None = None
        self.tmpfs: bool = False
        self.tmpfs_message = ""

    # --- set-up -----------------------------------------------------------------------------------------------
    def start_peers(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(exist_ok=True)
        self._mount_tmpfs()
        ports = {}
        for kind in ("modbus", "opcua"):
            port = free_port()
            proc = start([sys.executable, "-m", "bench.soak_sources", kind, "--port", str(port),
                          "--step-s", str(self.step_s)], self.run / f"source-{kind}.log",
                         env={"PYTHONPATH": str(ROOT)})
            self.peers.append(proc)
            ports[kind] = port
        self.broker = Broker(self.run / "mosquitto")
        self.kinesalite = start_kinesalite(self.run)
        create_stream(self.kinesalite.endpoint_url, KINESIS_STREAM, shards=1)  # one shard: stream order is order
        for kind, port in ports.items():
            wait_for(lambda port=port: port_open(port) or any(  # type: ignore[misc]
                     p.popen.poll() is not None for p in self.peers), 60,
                     f"the countable {kind} source")
            if not port_open(port):
                raise RuntimeError(f"the {kind} source exited:\n" + "\n".join(p.output()[-2000:] for p in self.peers))
        self.proxies = {"modbus": FaultProxy(ports["modbus"]).start(), "opcua": FaultProxy(ports["opcua"]).start(),
                        "mqtt": FaultProxy(self.broker.tls_port).start(),
                        "kinesis": FaultProxy(self.kinesalite.port).start()}
        EmbeddedStore(self.data)  # created before the first component, so every one sees the same store
        self.supervisor.start()

    def _mount_tmpfs(self) -> None:
        """The file destination's folder on a small tmpfs, so that a disk-full phase can fill it."""
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "soak-tmpfs", str(self.out)],
                              capture_output=True, text=True)
        self.tmpfs = done.returncode == 0
        if not self.tmpfs:
            self.tmpfs_message = (f"disk-full phase skipped: mounting a tmpfs on {self.out} was refused "
                                  f"({done.stderr.strip() or done.returncode}); run as root to include it")

    # --- components ---------------------------------------------------------------------------------------------
    def _component(self, name: str, entry: str, cfg: dict[str, Any]) -> Component:
        path = self.run / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return Component(name, [sys.executable, str(ROOT / "components" / entry / "main.py"), "--config", str(path)],
                         self.run / "logs" / f"{name}.log", self.run,
                         {"PYTHONPATH": str(ROOT), **TEST_CREDENTIALS})

    def _base(self) -> dict[str, Any]:
        return {"store": {"kind": "embedded", "path": str(self.data)}, "status_interval_s": 0.5}

    def modbus_collector(self, name: str, stream: dict[str, Any], *, fast: bool = False) -> Component:
        # fast: read every 50 ms and send each reading (heartbeat below the scan): fills a small stream in seconds
        conn = {"name": name, "host": "127.0.0.1", "port": self.proxies["modbus"].port, "timeout_s": 1,
                "scan_interval_s": 0.05 if fast else 0.1, "reconnect_min_s": 0.2, "reconnect_max_s": 2,
                "flush_interval_s": 0.1, "tag_prefix": f"{name}/",
                "deadband": {"heartbeat_s": 0.01 if fast else 60},
                "units": [{"unit_id": 1, "tags": [{"name": "Counter", "fc": 3, "address": 0, "type": "uint32"}]}]}
        return self._component(name, "modbus_collector", {**self._base(), "stream": stream, "connections": [conn]})

    def opcua_collector(self) -> Component:
        conn = {"name": "ua", "endpoint": f"opc.tcp://127.0.0.1:{self.proxies['opcua'].port}/soak",
                "namespace_uri": "urn:factoryedge:soak", "nodes": ["s=Counter"], "tag_prefix": "ua/",
                "publishing_interval_ms": 100, "keepalive_s": 2, "timeout_s": 3, "watchdog_s": 5,
                "session_timeout_s": 10, "reconnect_min_s": 0.2, "reconnect_max_s": 2, "flush_interval_s": 0.1,
                "security": {"pki_dir": str(self.run / "opcua-pki")}}
        return self._component("ua", "opcua_collector",
                               {**self._base(), "stream": {"name": "soak-opcua"}, "connections": [conn]})

    def anomaly_detector(self) -> Component:
        group = {"name": "counters", "tags": ["mb/Counter", "ua/Counter"], "mode": "cadence", "cadence_s": 1.0,
                 "training_points": 100, "forest": {"trees": 10, "samples_per_tree": 32}}
        return self._component("anomaly", "anomaly_detector", {
            **self._base(), "input_streams": ["soak-modbus", "soak-opcua"], "start_from": "oldest",
            "model_dir": str(self.run / "anomaly-model"), "save_interval_s": 20, "groups": [group]})

    def publisher(self) -> Component:
        assert self.broker is not None
        common = {"retry_min_s": 0.2, "retry_max_s": 2.0, "batch_messages": 50,
                  "route": {"streams": list(STREAMS)}}
        pki = self.broker.pki
        return self._component("publisher", "publisher", {
            **self._base(), "metrics_interval_s": 3600,
            "destinations": [
                {"type": "file", "name": "file", "path": str(self.out / "records.jsonl"), "max_bytes": 4 * 2**20,
                 "keep": 1000, **common},
                {"type": "mqtt", "name": "mqtt", "host": "127.0.0.1", "port": self.proxies["mqtt"].port,
                 "client_id": "soak-pub", "topic": "soak/{source}/{group}", "ack_timeout_s": 2, "keepalive_s": 5,
                 "tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
                 **common},
                {"type": "kinesis", "name": "kinesis", "stream_name": KINESIS_STREAM, **common,
                 "aws": {"endpoint_url": f"http://127.0.0.1:{self.proxies['kinesis'].port}",
                         "allow_insecure_endpoint": True, "region": "us-east-1",
                         "connect_timeout_s": 2, "read_timeout_s": 2}},
            ]})

    # --- what the components say -----------------------------------------------------------------------------
    def status(self, component: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data / "status" / f"{component}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def destination(self, name: str) -> dict[str, Any]:
        return dict(self.status("factoryedge.Publisher").get("destinations", {}).get(name, {}))

    # --- tear-down --------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.supervisor.stop_all()
        for proxy in self.proxies.values():
            proxy.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.kinesalite is not None:
            self.kinesalite.stop()
        for proc in self.peers:
            proc.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.out)], capture_output=True)
