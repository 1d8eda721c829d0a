"""Stricter request PDUs for the simulator's Modbus server, so malformed requests get the exception the Modbus
Application Protocol specification (v1.1b3, section 7) prescribes instead of pymodbus's own answer.

pymodbus 3.16 as a server answers a read with count 0 or above the limit, a too short PDU and an unknown function
code all with exception 1 on function 0x80 (its decoder fails before any handler runs), and treats a single-coil
write of any non-zero value as ON although only 0xFF00 and 0x0000 are valid. Here:

- reads (FC 1-4) with a count outside 1-2000 bits / 1-125 registers, or a truncated request, answer
  ``fc | 0x80`` with exception 3 (ILLEGAL DATA VALUE);
- FC 5 with a value other than 0xFF00/0x0000 answers exception 3 and changes nothing;
- function codes the simulator does not serve (see :data:`SERVED`) answer ``fc | 0x80`` with exception 1
  (ILLEGAL FUNCTION).
"""

from __future__ import annotations

import struct

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

_ON, _OFF = 0xFF00, 0x0000


def _refuse(request: ModbusPDU, code: ExcCodes) -> ExceptionResponse:
    return ExceptionResponse(request.function_code, code, device_id=request.dev_id,
                             transaction=request.transaction_id)


class _StrictRead(ModbusPDU):
    """A read whose count is checked when handled (an exception response), not when decoded (no response)."""

    MAX_COUNT = 125
    malformed = False

    def decode(self, data: bytes) -> None:
        if len(data) < 4:
            self.address, self.count, self.malformed = 0, 0, True
            return
        self.address, self.count = struct.unpack(">HH", data[:4])

    async def datastore_update(self, context: object, device_id: int) -> ModbusPDU:
        if self.malformed or not 1 <= self.count <= self.MAX_COUNT:
            return _refuse(self, ExcCodes.ILLEGAL_VALUE)
        return await super().datastore_update(context, device_id)  # type: ignore[arg-type]


class StrictReadCoils(_StrictRead, ReadCoilsRequest):
    MAX_COUNT = 2000


class StrictReadDiscreteInputs(_StrictRead, ReadDiscreteInputsRequest):
    MAX_COUNT = 2000


class StrictReadHoldingRegisters(_StrictRead, ReadHoldingRegistersRequest):
    MAX_COUNT = 125


class StrictReadInputRegisters(_StrictRead, ReadInputRegistersRequest):
    MAX_COUNT = 125


class StrictWriteSingleCoil(WriteSingleCoilRequest):
    """FC 5 accepting only the two values the specification defines."""

    value = _OFF

    def decode(self, data: bytes) -> None:
        if len(data) < 4:
            self.address, self.value = 0, -1
        else:
            self.address, self.value = struct.unpack(">HH", data[:4])
        self.bits = [self.value == _ON]

    async def datastore_update(self, context: object, device_id: int) -> ModbusPDU:
        if self.value not in (_ON, _OFF):
            return _refuse(self, ExcCodes.ILLEGAL_VALUE)
        return await super().datastore_update(context, device_id)  # type: ignore[arg-type]


class _Unsupported(ModbusPDU):
    """Any function code the server does not implement."""

    def decode(self, data: bytes) -> None:
        self.payload = data

    async def datastore_update(self, context: object, device_id: int) -> ModbusPDU:
        return _refuse(self, ExcCodes.ILLEGAL_FUNCTION)


#: Function codes served: bit and register access, and device identification (43). pymodbus also answers the
#: serial-line diagnostics (7, 8, 11, 12, 17) and file/FIFO access (20, 21, 24) with made-up data; this plant has
#: none of those, so they are ILLEGAL FUNCTION like any unknown code.
SERVED = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23, 43})


def strict_pdus() -> list[type[ModbusPDU]]:
    """The request classes to hand ``ModbusTcpServer(custom_pdu=...)``."""
    unsupported: list[type[ModbusPDU]] = [
        type(f"Unsupported{code:02X}", (_Unsupported,), {"function_code": code})
        for code in range(1, 0x80) if code not in SERVED
    ]
    return [StrictReadCoils, StrictReadDiscreteInputs, StrictReadHoldingRegisters, StrictReadInputRegisters,
            StrictWriteSingleCoil, *unsupported]
