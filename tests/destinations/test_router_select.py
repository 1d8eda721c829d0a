"""``Router.select``: the records a route wants, in order; a route that wants everything costs nothing per record."""

from __future__ import annotations

from gateway.destinations.base import Route, Router
from gateway.record import Kind, make_record

RECORDS = [make_record(src, tag, 1.0, seq=i, kind=kind)
           for i, (src, tag, kind) in enumerate([("plc", "a/x", Kind.VALUE), ("plc", "b/y", Kind.META),
                                                 ("opc", "a/z", Kind.SCORE), ("plc", "a/w", Kind.ALARM)])]


def test_a_route_that_wants_everything_returns_the_batch_itself() -> None:
    assert Router(Route(streams=["s"])).select(RECORDS) is RECORDS


def test_select_keeps_what_wants_accepts_in_order() -> None:
    for route in (Route(streams=["s"], kinds=["value", "alarm"]), Route(streams=["s"], tags=["a/*"]),
                  Route(streams=["s"], sources=["plc"]), Route(streams=["s"], exclude_tags=["a/z"])):
        router = Router(route)
        assert router.select(RECORDS) == [r for r in RECORDS if router.wants(r)]
        assert len(router.select(RECORDS)) < len(RECORDS)
