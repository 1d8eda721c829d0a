"""Issue 12 item 7 (terminal escape injection): what devices send must not drive the engineer's terminal.

Tag names, values, connection errors and register strings come from devices and the network. Each case puts ESC
sequences (CSI, OSC window title), BEL, CR, NUL, DEL, C1 controls, bidi overrides and isolates and a line separator
into what a device could supply, and runs the gatewayctl command that shows it: no raw control character may reach
the output (they appear escaped, e.g. ``\\x1b``), and ``--json`` output stays valid JSON holding the exact value.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.kinesis_peer import TEST_CREDENTIALS
from devkit.peers import ROOT
from devkit.sitewise_fake import SiteWiseFake
from gateway.record import make_record
from gateway.streams import RecordWriter, StreamSpec
from gateway.streams.embedded import EmbeddedStore

EVIL = "A\x1b[2J\x1b]0;owned\x07B\rC\x00D\x7fE\x9b31mF\u202eG\u2066H\u2028I\x85J"
# What a Modbus device can hold in registers: ASCII, up to the first NUL.
EVIL_ASCII = b"\x1b[2J\x1b]0;x\x07\r\x7fZ"
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def _raw_controls(text: str) -> list[str]:
    """The unsafe characters in ``text`` other than the newlines that end output lines."""
    return sorted({repr(ch) for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE})


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
                          errors="surrogateescape")


def _assert_clean(result: subprocess.CompletedProcess[str], must_show: str) -> None:
    out = result.stdout + result.stderr
    assert not _raw_controls(out), f"{result.args}: raw control characters {_raw_controls(out)} in:\n{out!r}"
    assert must_show in out, f"{result.args}: {must_show!r} not shown escaped:\n{out}"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    s = EmbeddedStore(folder)
    s.create_stream(StreamSpec(name="values"))
    now = time.time_ns()
    RecordWriter(s, "values").write([
        make_record(f"plc{EVIL}", f"line/{EVIL}", f"value{EVIL}", seq=0, source_ts_ns=now - 1_000_000_000),
        make_record("plc", f"tag{EVIL}", 1.5, seq=1, source_ts_ns=now - 1_000_000_000),
    ])
    s.close()
    return folder


def test_tail_escapes_controls_and_tail_json_stays_exact(store: Path) -> None:
    human = _ctl("--store", str(store), "tail", "values")
    assert human.returncode == 0, human.stderr
    _assert_clean(human, "\\x1b[2J")
    assert "\\u202e" in human.stdout and "\\x9b" in human.stdout and "\\x0d" in human.stdout
    as_json = _ctl("--store", str(store), "tail", "values", "--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.splitlines()
    assert len(lines) == 2
    got = [json.loads(line) for line in lines]  # every line valid JSON (a raw CR or bidi would still parse: check)
    assert not _raw_controls(as_json.stdout)
    assert got[0]["tag"] == f"line/{EVIL}" and got[0]["value"] == f"value{EVIL}"


def test_status_and_streams_escape_what_status_files_quote(store: Path) -> None:
    (store / "status").mkdir(exist_ok=True)
    status = {"component": "factoryedge.OpcUaCollector", "pid": os.getpid(), "updated_ns": time.time_ns(),
              "connections": {f"plc{EVIL}": {"connected": False, "values_read": 1, "last_error": f"server: {EVIL}"}},
              "destinations": {f"d{EVIL}": {"records_sent": 1, "last_error": f"refused {EVIL}"}},
              "groups": {f"g{EVIL}": {"state": f"s{EVIL}", "score": 0.5, "threshold": 1.0}}}
    (store / "status" / "factoryedge.OpcUaCollector.json").write_text(json.dumps(status))
    _assert_clean(_ctl("--store", str(store), "status"), "\\x1b[2J")
    as_json = _ctl("--store", str(store), "status", "--json")
    assert json.loads(as_json.stdout)["connections"][0]["last_error"] == f"server: {EVIL}"
    _assert_clean(_ctl("--store", str(store), "streams"), "values")


def test_replay_escapes_the_reasons_a_service_quotes(store: Path, tmp_path: Path) -> None:
    fake = SiteWiseFake({}).start()  # no property exists: every alias (from the tag) is refused, quoted back
    try:
        cfg = tmp_path / "publisher.yaml"
        cfg.write_text(yaml.safe_dump({
            "store": {"kind": "embedded", "path": str(store)},
            "destinations": [{"type": "sitewise", "name": "sw", "alias_template": "/{tag}",
                              "route": {"streams": ["values"]},
                              "aws": {"endpoint_url": fake.endpoint_url, "allow_insecure_endpoint": True}}]}))
        env = {**TEST_CREDENTIALS, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
               "AWS_CONFIG_FILE": str(tmp_path / "none")}
        result = _ctl("--config", str(cfg), "replay", "values", "--from", "now-1h", "--destination", "sw",
                      "--retries", "0", env=env)
    finally:
        fake.stop()
    assert "rejected" in result.stderr, result.stdout + result.stderr
    _assert_clean(result, "\\x1b[2J")


class RegisterDevice:
    """A Modbus TCP device of one holding-register block: answers function code 3 from ``registers``."""

    def __init__(self, registers: bytes) -> None:
        self.registers = registers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while (head := conn.recv(7)) and len(head) == 7:
                        pdu = conn.recv(int.from_bytes(head[4:6], "big") - 1)
                        start, count = int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
                        data = self.registers[2 * start : 2 * (start + count)].ljust(2 * count, b"\0")
                        body = bytes([head[6], 3, len(data)]) + data
                        conn.sendall(head[:4] + (len(body)).to_bytes(2, "big") + body)
                except OSError:
                    continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def device() -> Iterator[RegisterDevice]:
    d = RegisterDevice(EVIL_ASCII)
    yield d
    d.stop()


def test_modbus_read_escapes_a_string_the_device_holds(device: RegisterDevice) -> None:
    args = ["modbus", "read", "127.0.0.1", "0", "--port", str(device.port), "--type", "string", "--length",
            str(len(EVIL_ASCII))]
    result = _ctl(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_clean(result, "\\x1b[2J")
    as_json = _ctl(*args, "--json")
    assert EVIL_ASCII.decode() in json.dumps(json.loads(as_json.stdout)["values"][0]["orders"]["ABCD"]) or \
        json.loads(as_json.stdout)["values"][0]["orders"]["ABCD"] == EVIL_ASCII.decode()
