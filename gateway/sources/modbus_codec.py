"""Modbus register maps without I/O: the tag model, request planning (coalescing) and decoding.

Byte orders name where bytes A (most significant) .. D of a 32-bit value land in the registers as they arrive on the
wire: ABCD big endian, CDAB word swap, BADC byte swap, DCBA little endian. 64-bit values follow the same two
choices (words in reverse order for CDAB/DCBA, bytes swapped within each register for BADC/DCBA); 16-bit values
and strings only know the byte swap (BADC/DCBA). Every order reduces to "swap the bytes of each register or not"
followed by a big- or little-endian unpack, so a request's registers are turned into bytes once and each tag is a
single ``unpack_from``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.record import Scalar, Value

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
ORDERS: tuple[Order, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
FunctionCode = Literal[1, 2, 3, 4]

TABLES = {1: "coils", 2: "discrete inputs", 3: "holding registers", 4: "input registers"}
MAX_REGISTERS = 125  # per read request, Modbus spec (FC 3/4)
MAX_BITS = 2000  # per read request, Modbus spec (FC 1/2)
MAX_ADDRESS = 65535

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
            "float32": "f", "float64": "d"}
_WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
          "int64": 4, "uint64": 4, "float64": 4}
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
              5: "acknowledge", 6: "server device busy", 10: "gateway path unavailable",
              11: "gateway target device failed to respond"}


class ModbusTag(BaseModel):
    """One value in a device's register map."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Source tag name (mapped by tag_map / tag_prefix), e.g. Line1/Speed.")
    fc: FunctionCode = Field(
        default=3, description="Read function code = table: 1 coils, 2 discrete inputs, 3 holding registers, "
        "4 input registers.",
    )
    address: int = Field(ge=0, description="First register (or bit) of the value, in the connection's address_base.")
    type: DataType = Field(
        default="uint16", description="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64 or string. "
        "Coils and discrete inputs are bool; a bool in a register table needs `bit`.",
    )
    length: int | None = Field(
        default=None, ge=1, le=250, description="Characters of a string (two per register); required for strings."
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="For bool in a register table: the bit (0 = least significant)."
    )
    order: Order | None = Field(
        default=None, description="Byte/word order of this tag; null uses the unit's order. ABCD big endian, "
        "CDAB word swap, BADC byte swap, DCBA little endian.",
    )
    scale: float = Field(default=1.0, description="Published value = raw * scale + offset (numeric types only).")
    offset: float = Field(default=0.0, description="Added after scaling (numeric types only).")

    @property
    def width(self) -> int:
        """Registers (or bits) the value occupies."""
        if self.type == "string":
            return ((self.length or 1) + 1) // 2
        return 1 if self.fc in (1, 2) else _WIDTH[self.type]

    @model_validator(mode="after")
    def _check(self) -> ModbusTag:
        where = f"tag {self.name!r} (fc {self.fc}, address {self.address})"
        if self.fc in (1, 2) and self.type != "bool":
            raise ValueError(f"{where}: type {self.type} does not fit {TABLES[self.fc]}, which hold single bits: "
                             "use type: bool, or fc: 3/4 for register values")
        if self.fc in (3, 4) and self.type == "bool" and self.bit is None:
            raise ValueError(f"{where}: a bool in {TABLES[self.fc]} needs `bit: 0-15` (which bit of the register)")
        if self.bit is not None and not (self.type == "bool" and self.fc in (3, 4)):
            raise ValueError(f"{where}: `bit` only applies to type bool in holding/input registers: remove it")
        if self.type == "string" and self.length is None:
            raise ValueError(f"{where}: type string needs `length` (characters; two per register): add length: N")
        if self.type != "string" and self.length is not None:
            raise ValueError(f"{where}: `length` only applies to type string: remove it")
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"{where}: scale/offset apply to numeric types only, not {self.type}: remove them")
        if self.scale == 0:
            raise ValueError(f"{where}: scale 0 would publish a constant: use 1 for no scaling")
        return self


@dataclass
class Request:
    """One coalesced read: ``count`` registers (or bits) from ``address`` (protocol, zero-based) of one unit."""

    unit: int
    fc: int
    address: int
    count: int
    tags: list[tuple[ModbusTag, int]] = field(default_factory=list)  # (tag, offset in the request)

    @property
    def label(self) -> str:
        return f"unit {self.unit} {TABLES[self.fc]} {self.address}-{self.address + self.count - 1}"


def plan(unit: int, tags: Sequence[ModbusTag], *, base: int, max_gap: int, max_registers: int = MAX_REGISTERS,
         max_bits: int = MAX_BITS) -> list[Request]:
    """Coalesce the tags of one unit into as few reads as possible.

    Tags of one table, sorted by address, share a request while it stays within the size limit and the unread gap
    before the next tag is at most ``max_gap`` registers (bits for coils and inputs): reading a gap costs little,
    but a gap may hold addresses the device refuses.
    """
    out: list[Request] = []
    for fc in (1, 2, 3, 4):
        limit = max_bits if fc in (1, 2) else max_registers
        current: Request | None = None
        for tag in sorted((t for t in tags if t.fc == fc), key=lambda t: (t.address, t.width)):
            start, end = tag.address - base, tag.address - base + tag.width
            if current is not None:
                gap = start - (current.address + current.count)
                if gap <= max_gap and max(end, current.address + current.count) - current.address <= limit:
                    current.count = max(current.count, end - current.address)
                    current.tags.append((tag, start - current.address))
                    continue
            current = Request(unit, fc, start, tag.width, [(tag, 0)])
            out.append(current)
    return out


def _swap(raw: bytes) -> bytes:
    """Swap the two bytes of every register."""
    out = bytearray(raw)
    out[0::2], out[1::2] = raw[1::2], raw[0::2]
    return bytes(out)


class Decoder:
    """Decodes the registers or bits of one :class:`Request` into (tag name, value) pairs.

    The numbers of a request are laid out once, at construction, as a few :class:`struct.Struct` (one per byte swap
    and endianness, unread registers as pad bytes), so an answer of 62 float32 tags is one ``unpack_from``, not 62:
    per-value Python work is what a collector's CPU per value is made of (issue 18). Strings and bits of a register
    are taken one at a time.
    """

    def __init__(self, request: Request, default_order: Order) -> None:
        self.request = request
        self._bits = request.fc in (1, 2)
        self._names = [tag.name for tag, _ in request.tags]
        self._offsets = [offset for _, offset in request.tags]
        self._scaled: list[tuple[int, float, float]] = []  # (place, scale, offset) of numbers not published raw
        self._others: list[tuple[int, int, bool, ModbusTag]] = []  # (place, offset, swap, tag): strings, bits
        layouts: dict[tuple[bool, str], list[tuple[int, str, int]]] = {}  # (swap, endianness) -> (offset, code, place)
        for place, (tag, offset) in enumerate(request.tags):
            order = tag.order or default_order
            swap = order in ("BADC", "DCBA")  # bytes swapped within each register
            if tag.type not in _FORMATS:
                self._others.append((place, offset, swap, tag))
                continue
            little = _WIDTH[tag.type] > 1 and order in ("CDAB", "DCBA")
            # Registers in reverse order read as little endian once each register's bytes are swapped back,
            # so CDAB = swap + little endian and DCBA = wire bytes little endian.
            layouts.setdefault((swap != little, "<" if little else ">"), []).append((offset, _FORMATS[tag.type], place))
            if tag.scale != 1.0 or tag.offset != 0.0:
                self._scaled.append((place, tag.scale, tag.offset))
        # (swap, one unpack of several numbers, the places of what it unpacks)
        self._numbers = [group for (swap, endian), fields in layouts.items() for group in _layout(swap, endian, fields)]
        self._swaps = any(swap for swap, _, _ in self._numbers) or any(swap for _, _, swap, _ in self._others)

    def decode(self, data: Sequence[int] | Sequence[bool]) -> list[tuple[str, Scalar]]:
        """``data``: the registers (FC 3/4) or bits (FC 1/2) the request returned."""
        if self._bits:
            return [(name, bool(data[offset])) for name, offset in zip(self._names, self._offsets, strict=True)]
        wire = struct.pack(f">{len(data)}H", *data)
        swapped = _swap(wire) if self._swaps else wire
        values: list[Scalar] = [None] * len(self._names)
        for swap, layout, places in self._numbers:
            for place, raw in zip(places, layout.unpack_from(swapped if swap else wire), strict=True):
                values[place] = raw
        for place, scale, offset in self._scaled:
            values[place] = values[place] * scale + offset  # type: ignore[operator]
        for place, offset, swap, tag in self._others:
            if tag.type == "string":
                buf = swapped if swap else wire
                text = buf[offset * 2 : offset * 2 + (tag.length or 0)]
                values[place] = text.split(b"\x00", 1)[0].rstrip(b" ").decode("ascii", errors="replace")
            else:  # bool from a register bit
                values[place] = bool((data[offset] >> (tag.bit or 0)) & 1)
        return list(zip(self._names, values, strict=True))


def _layout(swap: bool, endian: str, fields: list[tuple[int, str, int]]) -> list[tuple[bool, struct.Struct, list[int]]]:
    """The numbers of one byte swap and endianness, ``(offset in registers, struct code, place)`` each, as structs
    that unpack them in one go: the registers between them are pad bytes. A number that overlaps the one before it
    (a validated map has none) starts another struct."""
    out: list[tuple[bool, struct.Struct, list[int]]] = []
    fmt, end = endian, 0
    places: list[int] = []
    for offset, code, place in sorted(fields):
        start = offset * 2
        if start < end:
            out.append((swap, struct.Struct(fmt), places))
            fmt, places, end = endian, [], 0
        fmt += f"{start - end}x{code}" if start > end else code
        places.append(place)
        end = start + struct.calcsize(endian + code)
    out.append((swap, struct.Struct(fmt), places))
    return out


def decode_value(registers: Sequence[int], type_: DataType, order: Order, length: int | None = None) -> Scalar:
    """Decode one value from its registers (the CLI and diagnostics use this)."""
    tag = ModbusTag(name="value", address=0, type=type_, order=order, length=length,
                    bit=0 if type_ == "bool" else None)
    request = Request(0, 3, 0, tag.width, [(tag, 0)])
    return Decoder(request, order).decode(list(registers))[0][1]


def plausible(value: Value) -> bool:
    """Whether a float read from a device looks like a measurement (not NaN, inf, denormal or astronomically large).

    A float read in the wrong order usually lands far outside 1e-6..1e9 (a word swap of 2705.0 reads 2.5e-29).
    """
    if not isinstance(value, float):
        return True
    if not math.isfinite(value):
        return False
    return value == 0.0 or 1e-6 <= abs(value) <= 1e9
