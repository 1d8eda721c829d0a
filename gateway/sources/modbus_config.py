"""Configuration of a Modbus TCP connection: its units and register maps, checked before anything connects.

Kept apart from :mod:`gateway.sources.modbus` so that reading or validating a configuration (every component,
gatewayctl, the build) never imports pymodbus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.diagnostics import Finding
from gateway.sources.common import ConnectionBase
from gateway.sources.modbus_codec import MAX_ADDRESS, MAX_BITS, MAX_REGISTERS, TABLES, ModbusTag, Order, Request, plan

if TYPE_CHECKING:
    from gateway.sources.modbus import ModbusSource


class ModbusUnit(BaseModel):
    """One unit id (slave id) behind the connection and its register map."""

    model_config = ConfigDict(extra="forbid")

    unit_id: int = Field(description="Unit id 0-255 (1-247 on serial devices behind a gateway; 255 or 1 on most "
                         "TCP devices).")
    order: Order = Field(default="ABCD", description="Byte/word order of this unit's multi-register values: ABCD big "
                         "endian, CDAB word swap, BADC byte swap, DCBA little endian (`gatewayctl modbus read` shows "
                         "all four).")
    tags: list[ModbusTag] = Field(min_length=1, description="The values to read from this unit.")

    @field_validator("unit_id")
    @classmethod
    def _unit_id(cls, v: int) -> int:
        if not 0 <= v <= 255:
            raise ValueError(f"unit_id {v} is outside 0-255: use the unit (slave) id set on the device")
        return v


class ModbusConnection(ConnectionBase):
    """One Modbus TCP server (a device or a gateway to serial devices)."""

    type: Literal["modbus"] = Field(default="modbus", description="Connection type.")
    host: str = Field(min_length=1, description="Device or gateway host name or IP address.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port (502 is the Modbus standard).")
    timeout_s: float = Field(default=2.0, gt=0, description="Time to wait for one answer before its tags go BAD.")
    scan_interval_s: float = Field(
        default=1.0, ge=0, description="Read every tag this often; 0 reads continuously, as fast as the device answers."
    )
    address_base: Literal[0, 1] = Field(
        default=0, description="0 if addresses are protocol addresses (0-65535), 1 if the device manual counts from 1 "
        "(register 1 is protocol address 0).",
    )
    max_gap: int = Field(
        default=8, ge=0, description="Largest run of unconfigured registers (bits for coils/inputs) read to merge two "
        "tags into one request; 0 merges only adjacent tags.",
    )
    max_registers: int = Field(
        default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS,
        description="Most registers per request (some devices take fewer)."
    )
    max_bits: int = Field(default=MAX_BITS, ge=1, le=MAX_BITS, description="Most coils/inputs per request.")
    units: list[ModbusUnit] = Field(min_length=1, description="Unit ids to read and their register maps.")

    @model_validator(mode="after")
    def _check(self) -> ModbusConnection:
        problems: list[str] = []
        names: dict[str, int] = {}
        ids: set[int] = set()
        for u in self.units:
            if u.unit_id in ids:
                problems.append(f"unit_id {u.unit_id} appears twice: merge its tags into one unit entry")
            ids.add(u.unit_id)
            spans: list[tuple[int, int, int, ModbusTag]] = []
            for t in u.tags:
                if t.name in names:
                    problems.append(f"tag name {t.name!r} is used twice (units {names[t.name]} and {u.unit_id}): "
                                    "tag names become record tags, make them unique")
                names[t.name] = u.unit_id
                start = t.address - self.address_base
                if start < 0:
                    problems.append(f"unit {u.unit_id} tag {t.name!r}: address 0 with address_base 1: with one-based "
                                    "addressing the first register is 1 (or set address_base: 0)")
                if start + t.width - 1 > MAX_ADDRESS:
                    problems.append(f"unit {u.unit_id} tag {t.name!r}: {t.type} at address {t.address} ends at "
                                    f"protocol address {start + t.width - 1} > {MAX_ADDRESS}: check the address "
                                    "(a Modicon 4xxxxx/3xxxxx number? drop the leading digit, fc gives the table)")
                spans.append((t.fc, start, start + t.width, t))
            problems.extend(_overlaps(u.unit_id, spans))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def requests(self) -> list[Request]:
        """The coalesced reads of one scan, unit by unit."""
        return [r for u in self.units for r in plan(u.unit_id, u.tags, base=self.address_base, max_gap=self.max_gap,
                                                      max_registers=self.max_registers, max_bits=self.max_bits)]

    def build(self) -> ModbusSource:
        """The connection's source (see :mod:`gateway.plugin`); pymodbus is loaded here, not by validation."""
        from gateway.sources.modbus import ModbusSource

        return ModbusSource(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of this device (see :mod:`gateway.plugin`)."""
        from gateway.sources.modbus import diagnose

        return await diagnose(self, timeout_s)


def _overlaps(unit: int, spans: list[tuple[int, int, int, ModbusTag]]) -> list[str]:
    out = []
    spans.sort(key=lambda s: (s[0], s[1]))
    reach: dict[int, tuple[int, ModbusTag]] = {}  # per table: the tag reaching furthest so far and its end
    for fc, start, end, b in spans:
        if fc in reach and start < reach[fc][0]:
            a = reach[fc][1]
            if not (a.bit is not None and b.bit is not None and a.address == b.address and a.bit != b.bit):
                out.append(f"unit {unit} {TABLES[fc]}: tags {a.name!r} ({a.type} at {a.address}) and {b.name!r} "
                           f"({b.type} at {b.address}) overlap: fix one address (a {a.type} takes {a.width} "
                           f"{'bits' if fc in (1, 2) else 'registers'})")
        if fc not in reach or end > reach[fc][0]:
            reach[fc] = (end, b)
    return out
