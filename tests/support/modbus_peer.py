"""The independent libmodbus C server (tests/peers/modbus_server.c) as a test peer.

:func:`compile_server` builds it (once per session is enough). :class:`LibModbus` writes its tables to a file,
starts it by PID on a free port, reloads the tables on SIGHUP and reads its request log (``-v``) to count what a
client asked.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from devkit.peers import Proc, free_port, port_open, start, wait_for

SRC = Path(__file__).parents[1] / "peers" / "modbus_server.c"
# Table names of the case folders' registers.json -> the server's table file keys.
FILE_KEYS = {"coils": "co", "discrete_inputs": "di", "holding_registers": "hr", "input_registers": "ir"}
Tables = dict[int, dict[str, dict[int, list[int]]]]  # unit id -> table (co/di/hr/ir) -> start address -> values


def compile_server(folder: Path) -> Path:
    """Compile the C server into ``folder`` against the system's libmodbus; returns the binary."""
    out = folder / "modbus_server"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], check=True, capture_output=True,
                           text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(SRC), *flags], check=True)
    return out


class LibModbus:
    """The C server as a peer process; ``holes`` are (unit, table, address, count) ranges answered with exception 2."""

    def __init__(self, binary: Path, folder: Path, tables: Tables, *, holes: Iterable[tuple[int, str, int, int]] = (),
                 silent: Iterable[int] = (), mutate: bool = False) -> None:
        self.binary, self.folder = binary, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data = folder / "tables.txt"
        self.port = free_port()
        self.args = ["-v", *(["-m"] if mutate else []), *(a for u in silent for a in ("-s", str(u)))]
        self.write(tables, holes)
        self.proc: Proc | None = None
        self.start()

    def write(self, tables: Tables, holes: Iterable[tuple[int, str, int, int]] = ()) -> None:
        lines = []
        for unit, by_table in tables.items():
            lines.append(f"unit {unit}")
            for tab, blocks in by_table.items():
                lines += [f"{tab} {start} {' '.join(map(str, values))}" for start, values in blocks.items()]
            lines += [f"hole {tab} {addr} {count}" for u, tab, addr, count in holes if u == unit]
        self.data.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = start([str(self.binary), str(self.port), str(self.data), *self.args],
                          self.folder / "libmodbus.log")
        wait_for(lambda: port_open(self.port) or self.proc is None or self.proc.popen.poll() is not None, 10,
                 "the libmodbus server to listen")
        assert self.proc.popen.poll() is None, self.proc.output()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def reload(self, tables: Tables, holes: Iterable[tuple[int, str, int, int]] = ()) -> None:
        assert self.proc is not None
        before = self.proc.output().count("RELOADED")
        self.write(tables, holes)
        self.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: self.proc is not None and self.proc.output().count("RELOADED") > before, 10, "the reload")

    def requests(self) -> list[tuple[int, int, int, int]]:
        """(unit, fc, address, count) of every request received so far."""
        out = []
        for line in (self.proc.output() if self.proc else "").splitlines():
            if line.startswith("REQ "):
                f = dict(kv.split("=") for kv in line.split()[1:])
                out.append((int(f["unit"]), int(f["fc"]), int(f["addr"]), int(f["count"])))
        return out
