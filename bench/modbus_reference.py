"""The references the Modbus collector's CPU per value is measured against (issue 18): bare clients, no gateway.

- :func:`pymodbus_loop`: a bare pymodbus client (the collector's own library and version) in its own process,
  reading the same holding-register requests one after the other and decoding every two registers as a float32
  (one ``struct`` unpack per answer, the cheapest a Python client does it): what the library alone costs.
- :func:`libmodbus_loop`: the same with libmodbus in C (tests/peers/modbus_client_bench.c): the physical reference.

Each runs for a warm-up and then a measured window, and reports the values decoded in the window and the process's
CPU time over it. ``python -m bench.modbus_reference PORT WARMUP_S WINDOW_S ADDR:COUNT...`` is the pymodbus loop
itself (what :func:`pymodbus_loop` starts).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sample:
    values: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_value(self) -> float:
        return self.cpu_s / self.values * 1e6

    @property
    def values_per_s(self) -> float:
        return self.values / self.wall_s


def _parse(line: str) -> Sample:
    values, cpu, wall = line.split()
    return Sample(int(values), float(cpu), float(wall))


def _args(port: int, requests: list[tuple[int, int]], warmup_s: float, window_s: float) -> list[str]:
    return [str(port), str(warmup_s), str(window_s), *(f"{a}:{c}" for a, c in requests)]


def pymodbus_loop(port: int, requests: list[tuple[int, int]], warmup_s: float, window_s: float) -> Sample:
    out = subprocess.run([sys.executable, "-m", "bench.modbus_reference",
                          *_args(port, requests, warmup_s, window_s)],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=warmup_s + window_s + 60)
    return _parse(out.stdout)


def build_libmodbus_client(folder: Path) -> Path:
    """Compile tests/peers/modbus_client_bench.c as collector_window.modbus_server compiles the server."""
    binary = folder / "modbus_client_bench"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], check=True, capture_output=True,
                           text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "tests" / "peers" / "modbus_client_bench.c"),
                    *flags], check=True)
    return binary


def libmodbus_loop(binary: Path, port: int, requests: list[tuple[int, int]], warmup_s: float,
                   window_s: float) -> Sample:
    out = subprocess.run([str(binary), *_args(port, requests, warmup_s, window_s)], check=True,
                         capture_output=True, text=True, timeout=warmup_s + window_s + 60)
    return _parse(out.stdout)


async def _loop(port: int, requests: list[tuple[int, int]], warmup_s: float, window_s: float) -> Sample:
    import struct

    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    if not await client.connect():
        raise SystemExit(f"cannot connect to 127.0.0.1:{port}")
    formats = [(struct.Struct(f">{c}H"), struct.Struct(f">{c // 2}f")) for _, c in requests]
    start = time.monotonic()
    t0 = cpu0 = 0.0
    values = 0
    measuring = False
    last: tuple[float, ...] = ()
    while True:
        now = time.monotonic()
        if not measuring and now - start >= warmup_s:
            measuring, values, t0, cpu0 = True, 0, now, time.process_time()
        if measuring and now - t0 >= window_s:
            break
        for (address, count), (regs, floats) in zip(requests, formats, strict=True):
            answer = await client.read_holding_registers(address, count=count, device_id=1)
            if answer.isError():
                raise SystemExit(f"read {address}:{count}: {answer}")
            last = floats.unpack(regs.pack(*answer.registers))
            values += len(last)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    client.close()
    return Sample(values, cpu, wall)


def main(argv: list[str]) -> None:
    port, warmup_s, window_s = int(argv[0]), float(argv[1]), float(argv[2])
    requests = [(int(a), int(c)) for a, c in (r.split(":") for r in argv[3:])]
    s = asyncio.run(_loop(port, requests, warmup_s, window_s))
    print(f"{s.values} {s.cpu_s:.6f} {s.wall_s:.6f}")


if __name__ == "__main__":
    main(sys.argv[1:])
