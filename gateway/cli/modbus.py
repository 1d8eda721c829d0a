"""``gatewayctl modbus read``: read registers from a device and show the value in every byte order side by side.

The on-site question "which byte order does this device use?" is answered by looking: the raw registers, the value
in ABCD, CDAB, BADC and DCBA, the order asked for marked, and implausible values (NaN, denormal, huge) flagged.

Examples:
  gatewayctl modbus read 10.0.0.5 100 --type float32 --order CDAB
  gatewayctl modbus read 10.0.0.5 0 --type uint32 --unit 3 --fc 4 --count 8
  gatewayctl modbus read plc.local 40001 --address-base 1 --type int16 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any, get_args

from pydantic import ValidationError
from pymodbus.exceptions import ModbusException

from gateway.cli.common import safe
from gateway.errors import SourceError
from gateway.sources.modbus import client_for, describe, read
from gateway.sources.modbus_codec import ORDERS, TABLES, DataType, ModbusTag, Request, decode_value, plausible

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``modbus`` command group to ``gatewayctl``'s subparsers."""
    parser = subparsers.add_parser("modbus", help="read a Modbus device: values in every byte order")
    sub = parser.add_subparsers(dest="modbus_command", required=True)
    rd = sub.add_parser("read", help="read values and show them in every byte order with the raw registers",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rd.add_argument("host", help="device or gateway host")
    rd.add_argument("address", type=int, help="first register (or coil) of the first value")
    rd.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    rd.add_argument("--unit", type=int, default=1, help="unit (slave) id, 0-255 (default 1)")
    rd.add_argument("--fc", type=int, choices=(1, 2, 3, 4), default=3,
                    help="function code: 1 coils, 2 discrete inputs, 3 holding (default), 4 input registers")
    rd.add_argument("--type", default="float32", choices=[t for t in get_args(DataType) if t != "bool"] + ["bool"],
                    help="data type (default float32; bool for coils and discrete inputs)")
    rd.add_argument("--order", choices=ORDERS, default="ABCD", help="the order you configured (marked with *)")
    rd.add_argument("--count", type=int, default=1, help="consecutive values to read (default 1)")
    rd.add_argument("--length", type=int, help="characters, for --type string")
    rd.add_argument("--address-base", type=int, choices=(0, 1), default=0,
                    help="1 if ADDRESS counts from 1 as in many device manuals (default 0)")
    rd.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    rd.add_argument("--json", action="store_true", help="machine-readable output")
    rd.set_defaults(func=cmd_read)


def cmd_read(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"gatewayctl modbus read: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(_read(args))
    except SourceError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(safe(f"gatewayctl modbus read: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result) if args.json else _table(result))
    return EXIT_OK


def _usage_problem(args: argparse.Namespace) -> str:
    if args.fc in (1, 2) and args.type != "bool":
        args.type = "bool"  # coils and inputs are bits whatever --type says
    if args.fc in (3, 4) and args.type == "bool":
        return "--type bool reads coils or discrete inputs: use --fc 1 or --fc 2"
    if not 0 <= args.unit <= 255:
        return f"--unit {args.unit} is outside 0-255: use the device's unit (slave) id"
    if args.type == "string" and not args.length:
        return "--type string needs --length (characters, two per register)"
    if args.count < 1:
        return f"--count {args.count}: read at least one value"
    try:
        tag = ModbusTag(name="v", fc=args.fc, address=args.address, type=args.type, length=args.length)
    except ValidationError as exc:
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    start = args.address - args.address_base
    total = tag.width * args.count
    limit = 2000 if args.fc in (1, 2) else 125
    if start < 0:
        return f"address {args.address} with --address-base 1: the first register is 1"
    if start + total - 1 > 65535:
        return f"address {args.address} + {total} {'bits' if args.fc in (1, 2) else 'registers'} passes 65535"
    if total > limit:
        return f"{args.count} x {tag.width} = {total} exceeds {limit} per request: lower --count"
    args.width, args.start, args.total = tag.width, start, total
    return ""


async def _read(args: argparse.Namespace) -> dict[str, Any]:
    client = client_for(args.host, args.port, args.timeout)
    where = f"{args.host}:{args.port}"
    try:
        if not await client.connect():
            raise SourceError(f"modbus {where}: cannot connect", fix="check host, port and the network")
        req = Request(args.unit, args.fc, args.start, args.total)
        try:
            pdu = await read(client, req)
        except ModbusException as exc:  # timeouts (ModbusIOException) and malformed answers
            raise SourceError(f"modbus {where}: {req.label}: no answer ({type(exc).__name__}: {exc})",
                              fix="check the unit id and that the device answers") from exc
        if pdu.isError():
            raise SourceError(f"modbus {where}: {req.label}: {describe(pdu)}",
                              fix="check --unit, --fc and the address against the device manual")
    finally:
        client.close()
    bits = args.fc in (1, 2)
    data = [bool(b) for b in pdu.bits[: args.total]] if bits else list(pdu.registers)
    rows = []
    for i in range(args.count):
        chunk = data[i * args.width : (i + 1) * args.width]
        row: dict[str, Any] = {"address": args.address + i * args.width}
        if bits:
            row.update(registers=[int(b) for b in chunk], value=bool(chunk[0]))
        else:
            regs = [int(r) for r in chunk]
            values = {o: decode_value(regs, args.type, o, args.length) for o in ORDERS}
            row.update(registers=regs, value=_json(values[args.order]),
                       orders={o: _json(v) for o, v in values.items()},
                       plausible=[o for o, v in values.items() if plausible(v)])
        rows.append(row)
    return {"ok": True, "host": args.host, "port": args.port, "unit": args.unit, "fc": args.fc,
            "table": TABLES[args.fc], "type": args.type, "order": args.order, "values": rows}


def _json(v: Any) -> Any:
    """NaN and infinities as strings: JSON has no literal for them."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _table(result: dict[str, Any]) -> str:
    head = (f"{result['host']}:{result['port']} unit {result['unit']} {result['table']} (fc {result['fc']}), "
            f"{result['type']}, configured order {result['order']}")
    lines = [head]
    if result["fc"] in (1, 2):
        lines.append(f"{'address':>8}  value")
        lines += [f"{r['address']:>8}  {_cell(r['value'])}" for r in result["values"]]
        return "\n".join(lines)
    cols = [f"{o}{'*' if o == result['order'] else ''}" for o in ORDERS]
    rows = [(r["address"], " ".join(f"{x:04X}" for x in r["registers"]),
             [f"{_cell(r['orders'][o], result['type'])}{'' if o in r['plausible'] else '?'}" for o in ORDERS])
            for r in result["values"]]
    # each column as wide as its longest cell: a 64-bit integer has up to 20 digits, float64 up to 24 characters
    widths = [max(16, len(c), *(len(cells[i]) for _, _, cells in rows)) + 2 for i, c in enumerate(cols)]
    regs_width = max(24, *(len(regs) for _, regs, _ in rows))

    def line(address: str, regs: str, cells: list[str]) -> str:
        return f"{address:>8}  {regs:{regs_width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))

    lines.append(line("address", "registers (hex)", cols))
    lines += [line(str(address), regs, cells) for address, regs, cells in rows]
    lines.append("* the order asked for (--order); ? implausible (NaN, infinite, denormal or beyond 1e9): "
                 "a float that reads plausibly in only one order shows the device's order")
    return "\n".join(lines)


def _cell(v: Any, kind: str = "") -> str:
    if isinstance(v, float):
        # float32 holds about 7 significant digits; a float64 is shown exactly (repr round-trips it)
        return repr(v) if kind == "float64" else f"{v:.7g}"
    return safe(v)  # a string value is whatever bytes the device holds: escaped for the terminal
