"""The bare asyncua client the OPC UA collector bench compares with (bench/bench_collector_opcua.py).

``python bench/opcua_bare.py --endpoint URL --namespace-uri URI --variables N --connections C
[--publishing-interval-ms MS] [--queue-size Q] [--mode handler|raw]`` subscribes to ``s=Bulk/V0 .. V{N-1}`` over
``C`` sessions, the nodes split between them as the collector's connections split them, with asyncua's own
``Subscription``: the same subscription parameters as the collector's
(:class:`gateway.sources.opcua_subscription.Feed`), the same monitored item settings (sampling interval 0, the queue
size, discard oldest, both timestamps), the same client timeouts and watchdog. Its datachange handler only counts
(asyncua 2.1 runs it in a task of its own per value).

``--mode raw`` is the floor below that: no ``Subscription`` object, a publish callback of our own that counts the
monitored items of each publish response (what the collector's :class:`Feed` is built on), so what it costs is
asyncua's publish loop and decoding alone.

It prints ``READY`` once every session is subscribed, and on SIGUSR2 ``COUNT <values> <time ns>``: the bench reads
those at the edges of its window, and the process's CPU time itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

from asyncua import Client, ua


class Counter:
    """The handler: one count per value, nothing else."""

    def __init__(self) -> None:
        self.values = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values += 1


async def session(args: argparse.Namespace, index: int, counter: Counter) -> Client:
    client = Client(args.endpoint, timeout=20, watchdog_intervall=10)  # the bench's timeout_s and keepalive_s
    await client.connect()
    ns = await client.get_namespace_index(args.namespace_uri)
    per = args.variables // args.connections
    nodes = [client.get_node(f"ns={ns};s=Bulk/V{i}") for i in range(index * per, (index + 1) * per)]
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=args.publishing_interval_ms, RequestedLifetimeCount=10000,
        RequestedMaxKeepAliveCount=client.get_keepalive_count(args.publishing_interval_ms),
        MaxNotificationsPerPublish=10000, PublishingEnabled=True, Priority=0)
    if args.mode == "raw":
        await raw(client, params, nodes, args.queue_size, counter)
        return client
    sub = await client.create_subscription(params, counter)
    for start in range(0, len(nodes), 1000):  # 1,000 monitored items a call, as the collector creates them
        await sub.subscribe_data_change(nodes[start : start + 1000], queuesize=int(args.queue_size),
                                        sampling_interval=ua.Double(0.0))
    return client


async def raw(client: Client, params: ua.CreateSubscriptionParameters, nodes: list[Any], queue_size: int,
              counter: Counter) -> None:
    def on_publish(result: ua.PublishResult) -> None:
        for notif in result.NotificationMessage.NotificationData or []:
            if isinstance(notif, ua.DataChangeNotification):
                counter.values += len(notif.MonitoredItems)

    sub_id = (await client.uaclient.create_subscription(params, on_publish)).SubscriptionId
    for start in range(0, len(nodes), 1000):
        items = [ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=start + i + 1, SamplingInterval=0,
                                                        QueueSize=queue_size, DiscardOldest=True))
            for i, node in enumerate(nodes[start : start + 1000])]
        await client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub_id, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=items))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--namespace-uri", required=True)
    parser.add_argument("--variables", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--publishing-interval-ms", type=float, default=100)
    parser.add_argument("--queue-size", type=int, default=5)
    parser.add_argument("--mode", choices=["handler", "raw"], default="handler")
    args = parser.parse_args()
    counter = Counter()
    clients = [await session(args, c, counter) for c in range(args.connections)]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, lambda: print(f"COUNT {counter.values} {time.time_ns()}", flush=True))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    for client in clients:
        await client.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
