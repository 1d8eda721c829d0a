"""Modbus TCP endpoint (pymodbus server); the register map is documented in ``simulator/README.md``.

Two unit ids serve the same plant, each with its own word/byte order, so a collector can be tested against two
orders at once. Registers are filled from the simulation's latest snapshot when a request arrives; disturbance
coils switch the plant directly.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore
from pymodbus.simulator.simutils import SimUtils

from simulator.modbus_pdu import strict_pdus
from simulator.plant import BASE_XMEAS, BASE_XMV, IDV_NUMBERS
from simulator.runtime import SimulationView, Snapshot

log = logging.getLogger(__name__)

#: Word/byte orders of 32-bit values, named by where bytes A (most significant) to D land in the two registers.
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

N_XMEAS, N_XMV = len(BASE_XMEAS), len(BASE_XMV)
IR_STATUS = 100  # input registers: status block start
IR_TIME, IR_SEED, IR_IDVS, IR_SHUTDOWN = 100, 102, 104, 106
COIL_RESET = 32  # write 1 to reset the plant (same seed)
_COIL_BITS = 48


def encode32(raw: bytes, order: str) -> tuple[int, int]:
    """Split 4 big-endian bytes (A B C D) into two registers in ``order``."""
    a, b, c, d = raw
    pairs = {"ABCD": (a, b, c, d), "CDAB": (c, d, a, b), "BADC": (b, a, d, c), "DCBA": (d, c, b, a)}[order]
    return (pairs[0] << 8) | pairs[1], (pairs[2] << 8) | pairs[3]


def decode32(registers: tuple[int, int] | list[int], order: str) -> bytes:
    """Inverse of :func:`encode32`: two registers in ``order`` back to big-endian bytes A B C D."""
    r0, r1 = registers
    x = (r0 >> 8, r0 & 0xFF, r1 >> 8, r1 & 0xFF)
    index = {"ABCD": (0, 1, 2, 3), "CDAB": (2, 3, 0, 1), "BADC": (1, 0, 3, 2), "DCBA": (3, 2, 1, 0)}[order]
    return bytes(x[index.index(i)] for i in range(4))


#: Where bytes A B C D of a big-endian 32-bit value go, per order: output byte i = input byte _SOURCE[order][i].
_SOURCE = {"ABCD": (0, 1, 2, 3), "CDAB": (2, 3, 0, 1), "BADC": (1, 0, 3, 2), "DCBA": (3, 2, 1, 0)}


def _to_registers(raw: bytes, order: str) -> list[int]:
    """Big-endian 32-bit values (``raw``, a multiple of 4 bytes) as registers in ``order``, all at once."""
    if order != "ABCD":
        out = bytearray(len(raw))
        for i, source in enumerate(_SOURCE[order]):
            out[i::4] = raw[source::4]
        raw = bytes(out)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def float_registers(values: list[float] | tuple[float, ...], order: str) -> list[int]:
    return _to_registers(struct.pack(f">{len(values)}f", *values), order)


def uint32_registers(value: int, order: str) -> list[int]:
    return _to_registers(struct.pack(">I", value & 0xFFFFFFFF), order)


@dataclass
class ModbusConfig:
    """Where the Modbus endpoint listens and how it encodes 32-bit values.

    Attributes:
        host: interface to bind.
        port: TCP port (502 by default, 5020 in the simulator's defaults so root is not needed).
        unit: primary unit id.
        order: word/byte order of the primary unit id.
        unit2: second unit id serving the same plant.
        order2: its order.
    """

    host: str = "127.0.0.1"
    port: int = 5020
    unit: int = 1
    order: str = "ABCD"
    unit2: int = 2
    order2: str = "CDAB"

    def __post_init__(self) -> None:
        for order in (self.order, self.order2):
            if order not in ORDERS:
                raise ValueError(f"Modbus order {order!r} unknown: use one of {', '.join(ORDERS)}")
        if self.unit == self.unit2 or not (1 <= self.unit <= 247 and 1 <= self.unit2 <= 247):
            raise ValueError(f"Modbus unit ids {self.unit} and {self.unit2} must differ and lie in 1-247")


class _StrictCore(SimCore):
    """SimCore that reports unknown unit ids the way the request handler expects (NoSuchIdException)."""

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit id {device_id} not served; use {sorted(self.devices)}")
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit id {device_id} not served; use {sorted(self.devices)}")
        return await super().async_setValues(device_id, func_code, address, values)


class _Registers:
    """Per-order cache of the snapshot encoded as registers; each table is encoded when first read."""

    def __init__(self, order: str) -> None:
        self.order = order
        self.seq = -1
        self._tables: dict[int, list[int]] = {}

    def table(self, snap: Snapshot, function_code: int) -> list[int]:
        """Registers (or bit-packed registers) of the table ``function_code`` reads, from ``snap``."""
        if snap.seq != self.seq:
            self._tables.clear()
            self.seq = snap.seq
        table = self._tables.get(function_code)
        if table is None:
            table = self._tables[function_code] = self._encode(snap, function_code)
        return table

    def _encode(self, snap: Snapshot, function_code: int) -> list[int]:
        order = self.order
        if function_code == 4:  # XMEAS, then the status block at IR_STATUS
            mask = sum(1 << (n - 1) for n in snap.active_idvs)
            status = struct.pack(">III", int(snap.t_s) & 0xFFFFFFFF, snap.seed & 0xFFFFFFFF, mask)
            return (float_registers(snap.values[:N_XMEAS], order) + [0] * (IR_STATUS - 2 * N_XMEAS)
                    + _to_registers(status, order) + [int(snap.shutdown)])
        if function_code == 3:
            return float_registers(snap.values[N_XMEAS:], order)
        if function_code == 1:
            bits = [n in snap.active_idvs for n in IDV_NUMBERS]
            return SimUtils.bitsToRegisters(bits + [False] * (_COIL_BITS - len(bits)))
        return SimUtils.bitsToRegisters([snap.shutdown] + [False] * 15)


class ModbusEndpoint:
    """Serves a simulation over Modbus TCP on two unit ids."""

    name = "modbus"

    def __init__(self, sim: SimulationView, config: ModbusConfig) -> None:
        self.sim = sim
        self.config = config
        self.server: ModbusTcpServer | None = None

    def _device(self, unit: int, order: str) -> SimDevice:
        cache = _Registers(order)
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=_COIL_BITS, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=2 * N_XMV, values=0, datatype=DataType.REGISTERS, readonly=True)],
                [SimData(0, count=2 * N_XMEAS, values=0, datatype=DataType.REGISTERS, readonly=True),
                 SimData(IR_STATUS, count=7, values=0, datatype=DataType.REGISTERS, readonly=True)],
            ),
            action=partial(self._action, cache),
        )

    async def start(self) -> None:
        config = self.config
        devices = [self._device(config.unit, config.order), self._device(config.unit2, config.order2)]
        self.server = ModbusTcpServer(devices, address=(config.host, config.port), custom_pdu=strict_pdus())
        # pymodbus answers an unknown unit id with a logged KeyError traceback and exception 4; a gateway
        # answers "gateway target device failed to respond" (0x0B), which is what collectors should handle.
        self.server.context = _StrictCore(devices)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]

    async def _action(
        self,
        cache: _Registers,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Fill the block from the latest snapshot before a read; apply coil writes to the plant."""
        if set_values is not None and function_code in (5, 15):
            return self._write_coils(address, [bool(v) for v in set_values])
        if function_code in (1, 2, 3, 4):
            table = cache.table(self.sim.snapshot, function_code)
            # pymodbus hands us its whole block (it starts at start_address); overwrite it in place, same length.
            part = table[start_address : start_address + len(registers)]
            registers[: len(part)] = part
        return None

    def _write_coils(self, address: int, values: list[bool]) -> ExcCodes | None:
        addresses = range(address, address + len(values))
        if any(not (a < len(IDV_NUMBERS) or a == COIL_RESET) for a in addresses):
            log.info("Modbus write to coils %d-%d refused: only IDV coils 0-%d and reset coil %d are writable",
                     address, addresses[-1], len(IDV_NUMBERS) - 1, COIL_RESET)
            return ExcCodes.ILLEGAL_ADDRESS
        for a, on in zip(addresses, values, strict=True):
            if a == COIL_RESET:
                if on:
                    self.sim.reset()
            else:
                self.sim.set_idv(IDV_NUMBERS[a], on)
        return None
