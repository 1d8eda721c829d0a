"""An asyncua OPC UA server with a structure of its own type, for the value tests (the second implementation next to
node-opcua's tests/peers/opcua_server.js: the two encode structures, matrices and Variants independently).

    python tests/peers/opcua_values_server.py --port P

Binds 127.0.0.1 only. Prints "READY port=P ns=I" once it listens. Namespace urn:factoryedge:test:asyncua, static
variables with node ids s=Values/<Name>:
  Reading   a Reading structure made with new_struct: Name String, Value Double, Samples Double[], Ok Boolean,
            Mode (an enumeration Mode: Auto=0, Manual=1) and Limits (a nested Limits structure: Low, High Double)
  Readings  Reading[2]
  DoubleArray Double[3], Int32Matrix Int32[2][3], Text LocalizedText, Bytes ByteString, Guid,
  Mixed     BaseDataType[] of Variants (Double, String, Boolean)
  Opaque    an ExtensionObject whose encoding id (i=9999 in our namespace) no data type describes
Runs in its own process so that the types asyncua registers for the server (process-wide) are not the client's: the
client under test must load them from the server's DataTypeDefinitions.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid

from asyncua import Server, ua
from asyncua.common.structures104 import new_enum, new_struct, new_struct_field

URI = "urn:factoryedge:test:asyncua"


def nid(ident: int | str, ns: int = 0) -> ua.NodeId:
    """A node id from plain values (asyncua types its constructor with its own int and str subclasses)."""
    return ua.NodeId(ua.Int32(ident) if isinstance(ident, int) else ua.String(ident), ua.Int16(ns))


async def main(port: int) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(URI)

    mode = await new_enum(server, idx, "Mode", ["Auto", "Manual"])
    limits, _ = await new_struct(server, idx, "Limits", [new_struct_field("Low", ua.VariantType.Double),
                                                          new_struct_field("High", ua.VariantType.Double)])
    reading, _ = await new_struct(server, idx, "Reading", [
        new_struct_field("Name", ua.VariantType.String),
        new_struct_field("Value", ua.VariantType.Double),
        new_struct_field("Samples", ua.VariantType.Double, array=True),
        new_struct_field("Ok", ua.VariantType.Boolean),
        new_struct_field("Mode", mode),
        new_struct_field("Limits", limits),
    ])
    await server.load_data_type_definitions()  # makes ua.Reading, ua.Limits, ua.Mode for the values below

    def make(name: str, value: float) -> object:
        return ua.Reading(Name=name, Value=value, Samples=[1.0, 2.0], Ok=True,  # type: ignore[attr-defined]
                          Mode=ua.Mode.Manual, Limits=ua.Limits(Low=0.0, High=100.0))  # type: ignore[attr-defined]

    folder = await server.nodes.objects.add_folder(nid("Values", idx), "Values")

    async def add(name: str, value: ua.Variant, datatype: ua.NodeId | None = None) -> None:
        await folder.add_variable(nid(f"Values/{name}", idx), name, value, datatype=datatype)

    await add("Reading", ua.Variant(make("R1", 42.5)), reading.nodeid)
    await add("Readings", ua.Variant([make("R2", 1.0), make("R3", 2.0)]), reading.nodeid)
    await add("DoubleArray", ua.Variant([1.5, 2.5, -3.25], ua.VariantType.Double))
    await add("Int32Matrix", ua.Variant([[1, 2, 3], [4, 5, 6]], ua.VariantType.Int32))
    await add("Text", ua.Variant(ua.LocalizedText("Grüße", "de-DE")))
    await add("Bytes", ua.Variant(b"\x00\x01\x02\xfe\xff", ua.VariantType.ByteString))
    await add("Guid", ua.Variant(uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"), ua.VariantType.Guid))
    await add("Mixed", ua.Variant([ua.Variant(1.5), ua.Variant("x"), ua.Variant(True)], ua.VariantType.Variant),
              nid(ua.ObjectIds.BaseDataType))
    await add("Opaque", ua.Variant(ua.ExtensionObject(TypeId=nid(9999, idx), Body=ua.ByteString(b"\x01\x02\x03\x04"))),
              nid(ua.ObjectIds.Structure))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"READY port={port} ns={idx}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
