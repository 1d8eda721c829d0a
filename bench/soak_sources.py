"""Countable sources for the soak: servers whose every value is known, so that what was lost can be counted.

Each serves one counter that goes up by one every ``step_s`` seconds from 1 on; a value the gateway stored is a
number between 1 and the last one served, and any number missing from a stream is a value no collector read (a gap),
any number stored but missing at a destination a loss of the delivery path.

- ``modbus``: a Modbus TCP server (function codes 3 and 4, any unit id) holding the counter as a big-endian uint32
  in registers 0-1, the rest zero. It is a few lines of the protocol rather than a pymodbus server because its only
  job is to be predictable: no simulation, no state but the clock.
- ``opcua``: an asyncua server with the variable ``ns=<urn:factoryedge:soak>;s=Counter`` (UInt32), written on
  every step so that a subscription sees every change.

Run as ``python -m bench.soak_sources modbus|opcua --port PORT --step-s 0.25``; bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import time

NAMESPACE = "urn:factoryedge:soak"
_ILLEGAL_FUNCTION = 1
_ILLEGAL_ADDRESS = 2


class Counter:
    """1, 2, 3 ... one step every ``step_s`` seconds of the monotonic clock since start."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.t0 = time.monotonic()

    def value(self) -> int:
        return 1 + int((time.monotonic() - self.t0) / self.step_s)


def modbus_answer(request: bytes, counter: int) -> bytes:
    """The answer to one Modbus TCP frame (MBAP header + PDU)."""
    tid, _proto, _length, unit = struct.unpack(">HHHB", request[:7])
    pdu = request[7:]
    fc = pdu[0]
    if fc not in (3, 4) or len(pdu) < 5:
        body = bytes([fc | 0x80, _ILLEGAL_FUNCTION])
    else:
        address, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= 125 or address + count > 65536:
            body = bytes([fc | 0x80, _ILLEGAL_ADDRESS])
        else:
            table = [counter >> 16 & 0xFFFF, counter & 0xFFFF]
            regs = [table[a] if a < 2 else 0 for a in range(address, address + count)]
            body = bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
    return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


async def serve_modbus(port: int, counter: Counter) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                length = struct.unpack(">H", header[4:6])[0]
                pdu = await reader.readexactly(length - 1)
                writer.write(modbus_answer(header + pdu, counter.value()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def serve_opcua(port: int, counter: Counter) -> None:
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/soak")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NAMESPACE)
    soak = await server.nodes.objects.add_object(ua.NodeId(ua.String("Soak"), ua.Int16(idx)), "Soak")
    var = await soak.add_variable(ua.NodeId(ua.String("Counter"), ua.Int16(idx)), "Counter",
                                  ua.Variant(0, ua.VariantType.UInt32))
    async with server:
        last = 0
        while True:
            now = counter.value()
            if now != last:
                last = now
                await var.write_value(ua.Variant(now, ua.VariantType.UInt32))
            await asyncio.sleep(counter.step_s / 5)  # the pace of the source, not synchronisation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["modbus", "opcua"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step-s", type=float, default=0.25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    counter = Counter(args.step_s)
    asyncio.run((serve_modbus if args.kind == "modbus" else serve_opcua)(args.port, counter))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
