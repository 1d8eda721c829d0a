"""The pieces of report by exception that need no server: the heartbeat timer of the emitter, the subscription's
sequence-gap arithmetic, and what a publish response turns into (gateway/sources/common.py,
gateway/sources/opcua_subscription.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from asyncua import ua

from gateway.record import Flag, Quality
from gateway.sources.common import ConnectionBase, Counters, Emitter
from gateway.sources.deadband import Deadband
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_config import OpcUaConnection
from gateway.sources.opcua_subscription import Feed, Losses, Lost, missing_messages, overflowed

SERVER_TS = 1_700_000_000_000_000_000


def _emitter(heartbeat_s: float) -> Emitter:
    return Emitter(ConnectionBase(name="c", deadband=Deadband(heartbeat_s=heartbeat_s)), Counters())


def test_heartbeat_resends_the_last_value_stamped_now_without_the_server_identity() -> None:
    em = _emitter(0.2)
    em.emit("t", 1.5, Quality.GOOD, SERVER_TS, status=0, flags=Flag.SERVER_TS)
    em.emit("bad", None, Quality.BAD, SERVER_TS, status=0x808C0000, flags=Flag.SERVER_TS)
    assert em.beat() == 0  # nothing is due yet
    first = em.take()

    async def wait_for_two_beats() -> None:
        task = asyncio.create_task(em.heartbeats(0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sum(r.tag == "t" for r in em.pending) < 2:
            assert loop.time() < deadline, em.pending
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(wait_for_two_beats())
    beats = [r for r in em.pending if r.tag == "t"]
    assert [r.value for r in beats] == [1.5, 1.5] and all(r.quality == Quality.GOOD for r in beats)
    assert all(r.source_ts_ns == r.gateway_ts_ns > SERVER_TS and r.flags == 0 for r in beats)
    assert beats[1].gateway_ts_ns - beats[0].gateway_ts_ns >= 0.1e9  # about every heartbeat_s, not every tick
    assert len({r.id for r in first + em.pending}) == len(first) + len(em.pending)
    bad = [r for r in em.pending if r.tag == "bad"]
    assert bad and all(r.status == 0x808C0000 and r.quality == Quality.BAD and r.value is None for r in bad)
    assert em.counters.values_read == 2  # a heartbeat reads nothing


def test_a_value_that_changes_resets_the_heartbeat_and_a_reading_sent_again_gets_a_new_identity() -> None:
    em = _emitter(60)
    em.emit("t", 1.0, Quality.GOOD, SERVER_TS, flags=Flag.SERVER_TS)
    em.emit("t", None, Quality.BAD, status=0x800D0000)  # the link is lost
    em.emit("t", 1.0, Quality.GOOD, SERVER_TS, flags=Flag.SERVER_TS)  # the same reading after the reconnect
    good, bad, again = em.take()
    assert bad.status == 0x800D0000 and good.flags == Flag.SERVER_TS
    # GOOD again must not collapse into the first GOOD downstream (same server time and value): stamped now
    assert again.id != good.id and again.flags == 0 and again.source_ts_ns == again.gateway_ts_ns
    assert em.beat() == 0


def test_status_changes_pass_the_deadband_but_info_bits_alone_do_not() -> None:
    em = _emitter(60)
    em.emit("t", 1.0, Quality.BAD, status=0x808C0000)
    em.emit("t", 1.0, Quality.BAD, status=0x808B0000)  # another Bad code: sent
    em.emit("t", 1.0, Quality.BAD, status=0x808B0480)  # the same code with the Overflow bit: a repeat
    assert [r.status for r in em.take()] == [0x808C0000, 0x808B0000]


def test_sequence_gaps() -> None:
    assert missing_messages(None, 17) == 0  # nothing expected yet
    assert missing_messages(5, 5) == 0
    assert missing_messages(5, 8) == 3
    assert missing_messages(0xFFFFFFFF, 1) == 1  # 2^32 - 1 is missing; the numbers wrap to 1, not 0
    assert missing_messages(0xFFFFFFFF, 2) == 2
    assert missing_messages(9, 4) == 0  # a message from the past (republished) loses nothing


def _result(seq: int, items: list[int] | None, second: int = 0) -> ua.PublishResult:
    msg = ua.NotificationMessage(SequenceNumber=seq, PublishTime=datetime(2026, 1, 1, 0, 0, second,
                                                                          tzinfo=timezone.utc))
    if items is not None:
        msg.NotificationData = [ua.DataChangeNotification(MonitoredItems=[
            ua.MonitoredItemNotification(ClientHandle=h, Value=ua.DataValue(ua.Variant(float(h))))
            for h in items])]
    return ua.PublishResult(SubscriptionId=1, NotificationMessage=msg)


def test_a_feed_reports_missing_messages_between_the_values_in_order() -> None:
    cfg = OpcUaConnection(name="c", endpoint="opc.tcp://127.0.0.1:4840", nodes=["ns=2;s=A", "ns=2;s=B"])
    feed = Feed(None, cfg, ["A", "B"])  # type: ignore[arg-type]  # no client: only publish responses arrive
    assert feed._on_publish(_result(1, [1, 2], 1)) is None
    assert feed._on_publish(_result(2, None, 2)) is None  # a keep-alive: the next message will be 2
    assert feed._on_publish(_result(2, [1], 3)) is None
    assert feed._on_publish(_result(5, [2], 9)) is None  # 3 and 4 never arrived
    assert feed._on_publish(_result(7, None, 10)) is None  # a keep-alive announcing 7: 6 never arrived

    async def drain() -> list[Any]:
        out = []
        while feed.backlog or feed._notices:
            out.append(await feed.next())
        return out

    notices = asyncio.run(drain())
    at = [int(datetime(2026, 1, 1, 0, 0, s, tzinfo=timezone.utc).timestamp() * 1e9) for s in (3, 9, 10)]
    assert [len(n) if isinstance(n, list) else n for n in notices] == [2, 1, Lost(at[0], at[1], 2), 1,
                                                                        Lost(at[1], at[2], 1)]


def test_a_full_feed_holds_the_publish_loop_until_the_consumer_takes() -> None:
    cfg = OpcUaConnection(name="c", endpoint="opc.tcp://127.0.0.1:4840", nodes=["ns=2;s=A"])
    feed = Feed(None, cfg, ["A"], limit=4)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        assert feed._on_publish(_result(1, [1, 1, 1])) is None
        held = feed._on_publish(_result(2, [1, 1]))  # 5 > 4: the publish loop must wait
        assert held is not None
        waiting = asyncio.ensure_future(held)
        await asyncio.sleep(0.05)
        assert not waiting.done()
        out = [await feed.next()]  # 2 left: at or below half the limit, room again
        await asyncio.wait_for(waiting, 5)
        out += [await feed.next(), await feed.next()]
        return out

    first, second, lost = asyncio.run(scenario())
    assert len(first) == 3 and len(second) == 2
    assert isinstance(lost, Lost) and lost.messages == 0 and lost.t2_ns >= lost.t1_ns


def test_overflow_bit() -> None:
    assert overflowed(ua.DataValue(ua.Variant(1.0), StatusCode=ua.StatusCode(ua.UInt32(0x00000480))))
    assert overflowed(ua.DataValue(ua.Variant(1.0), StatusCode=ua.StatusCode(ua.UInt32(0x808C0480))))
    # the Overflow bit without InfoType DataValue is not the data value's Overflow
    assert not overflowed(ua.DataValue(ua.Variant(1.0), StatusCode=ua.StatusCode(ua.UInt32(0x00000080))))
    assert not overflowed(ua.DataValue(ua.Variant(1.0)))


def _item(handle: int, value: Any, second: int | None, status: int = 0) -> ua.MonitoredItemNotification:
    at = ua.DateTime(2026, 1, 1, 0, 0, second, tzinfo=timezone.utc) if second is not None else None
    return ua.MonitoredItemNotification(ClientHandle=handle, Value=ua.DataValue(
        ua.Variant(value), StatusCode=ua.StatusCode(ua.UInt32(status)), SourceTimestamp=at,
        ServerTimestamp=ua.DateTime(2026, 1, 1, 0, 1, 0, tzinfo=timezone.utc)))


def test_a_notification_becomes_its_records_one_gateway_time_per_run_of_values_stamped_alike() -> None:
    tags = ["A", "B", "C", "D", "E", "F", "G"]
    cfg = OpcUaConnection(name="notification", endpoint="opc.tcp://127.0.0.1:4840",
                          nodes=[f"ns=2;s={t}" for t in tags], queue_size=5, arrays_by_tag={"G": "elements"})
    source = OpcUaSource(cfg)
    em = Emitter(cfg, Counters())
    losses = Losses("notification", em.counters)
    source._after_loss = {"C"}  # a value of C was lost before: its next one carries OVERFLOW
    items = [_item(1, 1.5, 1), _item(2, 2, 1), _item(3, "x", 1),  # one scan of the server: one run
             _item(4, 4.5, 1, 0x00000480),  # Good with the Overflow bit: its queue dropped values
             _item(5, 5.5, 1, 0x808C0000),  # BadSensorFailure
             _item(6, 6.5, None),  # no source time: the server's, without SERVER_TS
             _item(7, [1.0, 2.0], 2),  # an array read element by element
             _item(99, 9.9, 2)]  # a handle we never gave: ignored
    source._emit_notification(em, items, tags, losses)
    got = em.take()
    at1, at2 = (int(datetime(2026, 1, 1, 0, 0, s, tzinfo=timezone.utc).timestamp() * 1e9) for s in (1, 2))
    server = int(datetime(2026, 1, 1, 0, 1, 0, tzinfo=timezone.utc).timestamp() * 1e9)
    ts, ov = int(Flag.SERVER_TS), int(Flag.OVERFLOW)
    assert [(r.tag, r.value, r.quality, r.status, r.source_ts_ns, r.flags) for r in got] == [
        ("A", 1.5, Quality.GOOD, 0, at1, ts), ("B", 2, Quality.GOOD, 0, at1, ts),
        ("C", "x", Quality.GOOD, 0, at1, ts | ov), ("D", 4.5, Quality.GOOD, 0x480, at1, ts | ov),
        ("E", 5.5, Quality.BAD, 0x808C0000, at1, ts), ("F", 6.5, Quality.GOOD, 0, server, 0),
        ("G[0]", 1.0, Quality.GOOD, 0, at2, ts), ("G[1]", 2.0, Quality.GOOD, 0, at2, ts)]
    assert got[0].gateway_ts_ns == got[1].gateway_ts_ns  # one reading, one read time (Emitter.emit_many)
    assert em.counters.values_read == 8 and em.counters.values_lost == 1 and not source._after_loss
    assert source._last_value == {"A": 1.5, "B": 2, "C": "x", "D": 4.5, "E": 5.5, "F": 6.5, "G[0]": 1.0, "G[1]": 2.0}
    assert source._last_notified == {"A": at1, "B": at1, "C": at1, "D": at1, "E": at1, "F": server, "G": at2}


def test_queued_values_of_a_notification_are_emitted_by_reading_each_tag_in_order() -> None:
    cfg = OpcUaConnection(name="queued", endpoint="opc.tcp://127.0.0.1:4840", nodes=["ns=2;s=A", "ns=2;s=B"],
                          queue_size=5)
    source = OpcUaSource(cfg)
    em = Emitter(cfg, Counters())
    losses = Losses("queued", em.counters)
    # a monitored item's queue comes in one piece: A's values of three scans, then B's
    source._emit_notification(em, [_item(1, 1.0, 1), _item(1, 2.0, 2), _item(2, 10.0, 1), _item(2, 20.0, 2)],
                              ["A", "B"], losses)
    got = em.take()
    assert [(r.tag, r.value) for r in got] == [("A", 1.0), ("B", 10.0), ("A", 2.0), ("B", 20.0)]
    assert got[0].gateway_ts_ns == got[1].gateway_ts_ns and got[2].gateway_ts_ns == got[3].gateway_ts_ns
    # B's queue starts a scan earlier than A's: by reading, B's first value would come after its second
    source._emit_notification(em, [_item(1, 3.0, 4), _item(1, 4.0, 5), _item(2, 30.0, 3), _item(2, 40.0, 4)],
                              ["A", "B"], losses)
    got = em.take()
    assert [r.value for r in got if r.tag == "A"] == [3.0, 4.0]
    assert [r.value for r in got if r.tag == "B"] == [30.0, 40.0]
    assert source._last_value == {"A": 4.0, "B": 40.0}
