"""Modbus TCP collector connection (pymodbus): coalesced polling of register maps on several unit ids.

Every scan reads the planned requests (see :mod:`gateway.sources.modbus_codec`) one after the other. A request that
fails (a Modbus exception, a timeout) makes exactly its tags BAD, each carrying the last value it read (None if it
never read one), as OPC UA and OPC DA do on a link loss; the reason is counted and logged when it first
appears and when it clears, and the other requests keep flowing. Only a dead link (connection lost, or no answer at
all during a whole scan) ends :meth:`ModbusSource.run`, after marking every tag BAD once; the collector
runtime then reconnects with backoff, forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gateway.aio import cancel_requested
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import SourceError
from gateway.record import Quality, Value
from gateway.sources.common import Emitter
from gateway.sources.modbus_codec import (
    EXCEPTIONS,
    ORDERS,
    Decoder,
    Order,
    Request,
    decode_value,
    plausible,
)

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.modbus_config import ModbusConnection

log = logging.getLogger(__name__)

Data = Sequence[int] | Sequence[bool]  # what a read returned: registers or bits

NEVER = 1_000_000_000  # pymodbus closes the link after this many unanswered requests; we decide that ourselves

# connection name -> tag -> last value read. Kept across sessions (the collector makes a source per attempt), so a
# session that fails before its first read marks its tags BAD with the same value as the outage's first BAD record,
# which the deadband then suppresses: one BAD per tag and outage. Bounded by the configured tags.
_LAST_VALUES: dict[str, dict[str, Value]] = {}
_warned_plain: set[tuple[str, str, int]] = set()  # (connection, host, port) told it has no security, once a process


def describe(pdu: ModbusPDU) -> str:
    code = int(getattr(pdu, "exception_code", 0))
    return f"exception {code} ({EXCEPTIONS.get(code, 'unknown')})"


def client_for(host: str, port: int, timeout_s: float) -> AsyncModbusTcpClient:
    """A pymodbus client that neither retries nor reconnects by itself: both are our decisions."""
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    client.set_max_no_responses(NEVER)
    return client


async def read(client: AsyncModbusTcpClient, req: Request) -> ModbusPDU:
    """Send one read request; errors come back as PDUs (``isError()``), timeouts as ModbusIOException."""
    if req.fc == 1:
        return await client.read_coils(req.address, count=req.count, device_id=req.unit)
    if req.fc == 2:
        return await client.read_discrete_inputs(req.address, count=req.count, device_id=req.unit)
    if req.fc == 3:
        return await client.read_holding_registers(req.address, count=req.count, device_id=req.unit)
    return await client.read_input_registers(req.address, count=req.count, device_id=req.unit)


class ModbusSource:
    """Polls one Modbus TCP server; see the module docstring."""

    def __init__(self, cfg: ModbusConnection) -> None:
        self.cfg = cfg
        orders = {u.unit_id: u.order for u in cfg.units}
        self.decoders = [Decoder(r, orders[r.unit]) for r in cfg.requests()]
        self._failing: dict[str, str] = {}  # request label -> reason it currently fails
        self._last = _LAST_VALUES.setdefault(cfg.name, {})  # tag -> last value read (a BAD record carries it)

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        cfg = self.cfg
        warn_if_plain(cfg)
        client = client_for(cfg.host, cfg.port, cfg.timeout_s)
        try:
            if not await client.connect():
                raise SourceError(f"modbus {cfg.host}:{cfg.port}: cannot connect",
                                  fix="check host, port, the network and that the device accepts another client",
                                  retryable=True)
            on_connected()
            await self._poll(client, emitter)
        except asyncio.CancelledError:
            raise  # stopped or reconfigured: not a failure of the device's data
        except BaseException:
            if emitter.counters.connected:  # the link died: every tag is BAD until it is back
                for dec in self.decoders:
                    self._emit_bad(emitter, dec.request)
            raise
        finally:
            client.close()

    async def _poll(self, client: AsyncModbusTcpClient, emitter: Emitter) -> None:
        while True:
            t0 = time.monotonic()
            answered = 0
            for dec in self.decoders:
                await emitter.room()
                answered += await self._read_one(client, dec, emitter)
                if cancel_requested():  # 3.11 wait_for can lose the cancel (gateway.aio)
                    raise asyncio.CancelledError
            if not answered:
                # One silent request may be a unit behind a gateway that is down; a scan with no answer at all is
                # a dead link (e.g. a cut that leaves the TCP connection open), so reconnect.
                raise SourceError(f"modbus {self.cfg.host}:{self.cfg.port}: no answer to any of the "
                                  f"{len(self.decoders)} requests of a scan: link presumed dead", retryable=True)
            await asyncio.sleep(max(0.0, self.cfg.scan_interval_s - (time.monotonic() - t0)))

    async def _read_one(self, client: AsyncModbusTcpClient, dec: Decoder, emitter: Emitter) -> bool:
        """Read and emit one request; return False when the server did not answer at all."""
        req = dec.request
        try:
            pdu = await read(client, req)
        except ConnectionException as exc:
            raise SourceError(f"modbus {self.cfg.host}:{self.cfg.port}: connection lost ({exc})",
                              retryable=True) from exc
        except ModbusIOException:
            if not client.connected:
                raise SourceError(f"modbus {self.cfg.host}:{self.cfg.port}: connection lost", retryable=True) from None
            self._fail(emitter, req, f"no answer within {self.cfg.timeout_s} s")
            return False
        except ModbusException as exc:  # a malformed or mismatched answer: this request only
            self._fail(emitter, req, f"bad answer: {exc}")
            return True
        if pdu.isError():
            self._fail(emitter, req, describe(pdu))
            return True
        data = pdu.bits if req.fc in (1, 2) else pdu.registers
        if self._failing and req.label in self._failing:
            log.info("connection %s: %s reads again", self.cfg.name, req.label)
            del self._failing[req.label]
        values = dec.decode(data)
        self._last.update(values)
        emitter.emit_many(values, Quality.GOOD)
        return True

    def _fail(self, emitter: Emitter, req: Request, reason: str) -> None:
        emitter.counters.read_errors += 1
        errors: dict[str, int] = emitter.counters.extra.setdefault("errors", {})
        errors[reason] = errors.get(reason, 0) + 1
        emitter.counters.last_error = f"{req.label}: {reason}"
        if self._failing.get(req.label) != reason:
            self._failing[req.label] = reason
            log.warning("connection %s: %s: %s; its %d tag(s) are BAD until it reads again (%s)", self.cfg.name,
                        req.label, reason, len(req.tags), _hint(reason))
        self._emit_bad(emitter, req)

    def _emit_bad(self, emitter: Emitter, req: Request) -> None:
        # the same value and quality again is suppressed by the deadband: a scan of timeouts followed by the link
        # declared dead makes one BAD record per tag, not two
        emitter.emit_many([(tag.name, self._last.get(tag.name)) for tag, _ in req.tags], Quality.BAD)


def warn_if_plain(cfg: ModbusConnection) -> None:
    """Once per connection and device, as OPC UA and OPC DA do: the protocol has no security to configure. The
    collector makes a source per connection attempt, so a device that is down must not repeat this at every retry."""
    key = (cfg.name, cfg.host, cfg.port)
    if key not in _warned_plain:
        _warned_plain.add(key)
        log.warning("connection %s: Modbus TCP to %s:%d is unauthenticated and unencrypted (the protocol has "
                    "neither; the collector only reads, function codes 1-4): network segmentation is the control "
                    "(docs/collectors.md, Modbus TCP)", cfg.name, cfg.host, cfg.port)


def _hint(reason: str) -> str:
    if reason.startswith("exception 2"):
        return "fix the addresses or lower max_gap so the request skips registers the device refuses"
    if reason.startswith(("exception 10", "exception 11")) or reason.startswith("no answer"):
        return "check the unit id and that the device behind the gateway is powered and wired"
    if reason.startswith("exception 1"):
        return "the device does not support this function code: check fc"
    return "check the register map against the device manual"


async def diagnose(cfg: ModbusConnection, timeout_s: float) -> list[Finding]:
    """Host reachable, each unit id answers every planned request, float tags plausible in the configured order.

    Within ``timeout_s`` in all: a device that accepts the connection and never answers would otherwise cost one
    timeout per request (doctor gives up on the whole check after ``timeout_s`` + 2 s, losing what was found).
    """
    where = f"modbus {cfg.host}:{cfg.port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    client = client_for(cfg.host, cfg.port, min(cfg.timeout_s, timeout_s))
    try:
        if not await asyncio.wait_for(client.connect(), timeout_s):
            return [failed(where, "cannot connect", "check host, port, firewall, and that the device runs and "
                           "accepts another client (many allow only a few)")]
    except asyncio.TimeoutError:
        return [failed(where, f"no TCP connection within {timeout_s} s", "check host, port and the network path")]
    findings = [passed(where, "reachable")]
    try:
        orders = {u.unit_id: u.order for u in cfg.units}
        reads: dict[int, list[tuple[Request, Data | None, str]]] = {}
        for req in cfg.requests():
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                pdu = await asyncio.wait_for(read(client, req), left)
                result = (req, None, describe(pdu)) if pdu.isError() else (
                    req, pdu.bits if req.fc in (1, 2) else pdu.registers, "")
            except ModbusException as exc:
                result = (req, None, f"no answer ({type(exc).__name__})")
            except asyncio.TimeoutError:
                result = (req, None, f"no answer within this check's {timeout_s:g} s")
            reads.setdefault(req.unit, []).append(result)
        for unit, results in reads.items():
            findings.extend(_unit_findings(unit, orders[unit], results))
    finally:
        client.close()
    return findings


def _unit_findings(unit: int, order: Order, results: list[tuple[Request, Data | None, str]],
                   ) -> list[Finding]:
    check = f"modbus unit {unit}"
    errors = [(req, why) for req, data, why in results if data is None]
    if len(errors) == len(results):
        reason = errors[0][1]
        return [failed(check, f"does not answer: {reason} for {errors[0][0].label}",
                       "check the unit id (exception 11 or no answer: nothing with that id behind this address)"
                       if not reason.startswith("exception 2") else
                       "check the register addresses and address_base against the device manual")]
    out = [failed(check, f"{req.label}: {why}", _hint(why)) for req, why in errors]
    if not errors:
        out.append(passed(check, f"answers all {len(results)} request(s)"))
    out.extend(_order_findings(unit, order, results))
    return out


def _order_findings(unit: int, order: Order, results: list[tuple[Request, Data | None, str]],
                    ) -> list[Finding]:
    """The classic on-site question: is the byte order right? Look at what every order makes of the float tags."""
    wrong: list[tuple[str, float, dict[str, float]]] = []
    floats = 0
    for req, data, _ in results:
        if data is None or req.fc in (1, 2):
            continue
        for tag, offset in req.tags:
            if tag.type not in ("float32", "float64"):
                continue
            floats += 1
            regs = [int(r) for r in data[offset : offset + tag.width]]
            mine = tag.order or order
            value = decode_value(regs, tag.type, mine)
            if not plausible(value):
                others = {o: decode_value(regs, tag.type, o) for o in ORDERS if o != mine}
                wrong.append((tag.name, float(value or 0.0), {o: float(v or 0.0) for o, v in others.items()
                                                             if plausible(v)}))
    check = f"modbus unit {unit} byte order"
    if not floats:
        return []
    if not wrong:
        return [passed(check, f"{floats} float tag(s) read plausible values in {order}")]
    votes: dict[str, int] = {}
    for _, _, alts in wrong:
        for o in alts:
            votes[o] = votes.get(o, 0) + 1
    name, value, _ = wrong[0]
    if not votes:
        return [warning(check, f"{len(wrong)} of {floats} float tag(s) read implausible values in every order "
                        f"(e.g. {name} = {value:g})", "check the addresses, address_base and type of these tags")]
    best = max(votes, key=lambda o: votes[o])
    example = next((n, alts[best]) for n, _, alts in wrong if best in alts)
    return [failed(check, f"{len(wrong)} of {floats} float tag(s) read implausible values in {order} (e.g. {name} = "
                   f"{value:g}); {best} gives plausible values for {votes[best]} of them (e.g. {example[0]} = "
                   f"{example[1]:g})", f"set order: {best} for unit {unit} (compare all orders with "
                   "`gatewayctl modbus read HOST ADDR --type float32`)")]
