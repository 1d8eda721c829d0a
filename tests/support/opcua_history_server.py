"""An asyncua OPC UA server that historizes its tags, for the backfill tests: ``python -m
tests.support.opcua_history_server --port P --db FILE``.

Tags ``Counter0``..``Counter<n-1>`` (node ids ``i=1000``.. in the namespace ``urn:factoryedge:history``: asyncua's
SQLite history takes numeric ids only) count up every ``--period-s``, each write stamped with the current time as
its source timestamp, and are historized by asyncua's own history manager into a SQLite file (``--db``), which
survives a restart of this process. ``NoHistory`` (``i=1999``) changes too but is not historized (no HistoryRead
bit in its access level). Prints ``READY port=P ns=N`` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from asyncua import Server
from asyncua import ua as _ua
from asyncua.server.history_sql import HistorySQLite

# asyncua's NewType-based annotations (Int16, DateTime...) reject the plain ints and datetimes its runtime takes
ua: Any = _ua

URI = "urn:factoryedge:history"
FIRST_ID, NO_HISTORY_ID = 1000, 1999


async def serve(port: int, db: str, tags: int, period_s: float) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(URI)
    storage = HistorySQLite(db)
    server.iserver.history_manager.set_storage(storage)
    folder = await server.nodes.objects.add_folder(ns, "Plant")
    start = await _resume(storage, tags, ns)
    counters = [await folder.add_variable(ua.NodeId(FIRST_ID + i, ns), f"Counter{i}",
                                          ua.Variant(start, ua.VariantType.Int64)) for i in range(tags)]
    plain = await folder.add_variable(ua.NodeId(NO_HISTORY_ID, ns), "NoHistory",
                                      ua.Variant(start, ua.VariantType.Int64))
    async with server:
        await server.historize_node_data_change(counters, period=timedelta(days=1))
        print(f"READY port={port} ns={ns}", flush=True)
        n = start
        while True:
            await asyncio.sleep(period_s)
            n += 1
            now = datetime.now(timezone.utc)
            for node in [*counters, plain]:
                await node.write_value(ua.DataValue(ua.Variant(n, ua.VariantType.Int64), SourceTimestamp=now,
                                                    ServerTimestamp=now))


async def _resume(storage: HistorySQLite, tags: int, ns: int) -> int:
    """The next counter value: after the newest one a previous run historized, so a restart goes on counting."""
    await storage.init()
    newest = 0
    for i in range(tags):
        try:
            dvs, _ = await storage.read_node_history(ua.NodeId(FIRST_ID + i, ns), None,
                                                     datetime.now(timezone.utc) + timedelta(days=1), 1)
        except Exception:  # noqa: BLE001 - no table yet: a first start
            continue
        if dvs and dvs[0].Value is not None:
            newest = max(newest, int(dvs[0].Value.Value))
    return newest + 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True, help="SQLite file of the history (kept across restarts)")
    p.add_argument("--tags", type=int, default=3)
    p.add_argument("--period-s", type=float, default=0.1)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(a.port, a.db, a.tags, a.period_s))


if __name__ == "__main__":
    main()
