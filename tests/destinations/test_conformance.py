"""The destination contract (:mod:`gateway.destinations.base`, :mod:`gateway.plugin`), run over every destination type.

File in a temporary folder, MQTT against mosquitto, IoT Core through the Greengrass IPC stand-in, SiteWise against
its wire fake, Kinesis against kinesalite (behind devkit.kinesis_fault for per-record failures): the same tests,
each type one harness in :mod:`tests.support.destination_harness`. A type that cannot express a case skips it
saying why.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from gateway.componentconfig import DESTINATION_CONFIGS
from gateway.destinations.base import Destination, DestinationConfigBase, SendResult
from gateway.diagnostics import Finding
from gateway.errors import GatewayError
from gateway.plugin import Plugin
from gateway.record import Record
from tests.support.destination_harness import HARNESSES, Harness, records, send_retrying, until

CLOSE_DEADLINE_S = 1.0
#: What close may take beyond its deadline on a loaded machine (thread start, the loop's turn).
CLOSE_MARGIN_S = 1.0


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    yield HARNESSES[request.param](request, tmp_path, monkeypatch)


def run(harness: Harness, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with harness.running():
            await body()

    asyncio.run(main())


async def send_once(harness: Harness, batch: list[Record], **settings: object) -> SendResult:
    """Send ``batch`` once as the publisher does (retryable errors are retried until a deadline)."""
    dest = harness.config(**settings).build()
    await dest.start()
    try:
        return await send_retrying(dest, batch)
    finally:
        await dest.close(5.0)


def test_every_type_in_the_union_has_a_harness() -> None:
    types = {cls.model_fields["type"].default for cls in DESTINATION_CONFIGS}
    assert types == set(HARNESSES), "add a harness for each new destination type to tests.support.destination_harness"


@pytest.mark.parametrize("model", DESTINATION_CONFIGS, ids=lambda m: m.__name__)
def test_every_config_model_builds_a_destination_and_diagnoses(model: type[DestinationConfigBase]) -> None:
    """build() gives an object with the Destination protocol's methods; diagnose is a coroutine (gateway.plugin)."""
    minimal = HARNESSES[model.model_fields["type"].default].minimal
    cfg = cast(Plugin[Destination], model.model_validate({"name": "x", **minimal}))
    assert inspect.iscoroutinefunction(cfg.diagnose)

    async def body() -> None:
        dest: Destination = cfg.build()
        assert dest.name == "x"
        for method in ("start", "send", "close"):
            assert inspect.iscoroutinefunction(getattr(dest, method)), method
        assert list(inspect.signature(dest.close).parameters) == ["timeout_s"]
        await dest.close(CLOSE_DEADLINE_S)

    asyncio.run(body())


def test_accept_a_batch_is_sent_and_acknowledged(harness: Harness) -> None:
    batch = records(40)

    async def body() -> None:
        result = await send_once(harness, batch)
        assert not result.rejected and not result.retry and result.bytes_sent > 0
        await until(lambda: harness.delivered() >= len(batch), 10, f"{len(batch)} records at the peer")

    run(harness, body)
    assert harness.delivered() == len(batch)


def test_partial_failure_returns_only_the_refused_records_for_a_retry(harness: Harness) -> None:
    if harness.partial_skip:
        pytest.skip(harness.partial_skip)
    batch = records(40)

    async def body() -> None:
        dest = harness.config().build()
        await dest.start()
        try:
            harness.fail_next(1)
            result = await send_retrying(dest, batch)
            assert result.retry and len(result.retry) < len(batch) and result.retry_reason
            assert not result.rejected
            accepted = len(batch) - len(result.retry)
            await until(lambda: harness.delivered() >= accepted, 10, f"{accepted} accepted records at the peer")
            assert harness.delivered() == accepted  # nothing of what it asks to retry arrived
            harness.heal()
            again = await send_retrying(dest, result.retry)
            assert not again.retry and not again.rejected
        finally:
            await dest.close(5.0)
        await until(lambda: harness.delivered() >= len(batch), 10, "every record at the peer")

    run(harness, body)
    assert harness.delivered() == len(batch)


def test_retry_a_peer_that_is_down_raises_the_retryable_error(harness: Harness) -> None:
    async def body() -> None:
        dest = harness.down().build()
        try:
            with pytest.raises(GatewayError) as info:
                await dest.start()
                await dest.send(records(5))
        finally:
            await dest.close(5.0)
        assert info.value.retryable, info.value
        assert info.value.fix, "a retryable error still says what to check"

    run(harness, body)


def test_poison_record_is_rejected_alone_with_its_reason(harness: Harness) -> None:
    if harness.poison_skip:
        pytest.skip(harness.poison_skip)
    good = records(20)
    poison = harness.poison(len(good))

    async def body() -> None:
        result = await send_once(harness, [*good[:10], poison, *good[10:]])
        assert [r for r, _ in result.rejected] == [poison] and result.rejected[0][1]
        assert not result.retry  # refused for good: never resent
        await until(lambda: harness.delivered() >= len(good), 10, "the good records at the peer")

    run(harness, body)
    assert harness.delivered() == len(good)


def test_close_returns_within_its_deadline_while_the_peer_hangs(harness: Harness) -> None:
    if harness.hang_skip:
        pytest.skip(harness.hang_skip)

    async def body() -> None:
        dest = harness.hung().build()
        await dest.start()
        await harness.hang(dest)
        sending = asyncio.create_task(dest.send(records(20)))
        try:
            await until(harness.holds_request, 10, "the hung peer to hold our request")
            assert not sending.done(), sending
            t0 = time.monotonic()
            await dest.close(CLOSE_DEADLINE_S)
            took = time.monotonic() - t0
            assert took < CLOSE_DEADLINE_S + CLOSE_MARGIN_S, f"close took {took:.1f} s"
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            harness.release()

    run(harness, body)


def test_diagnose_finds_the_peer_and_reports_an_unreachable_one_as_a_failed_finding(harness: Harness) -> None:
    async def body() -> None:
        healthy = await harness.config().diagnose(5.0)
        assert healthy and all(isinstance(f, Finding) for f in healthy)
        assert all(f.ok is not False for f in healthy), healthy
        broken = await harness.down().diagnose(2.0)
        failed = [f for f in broken if f.ok is False]
        assert failed and all(f.fix for f in failed), broken

    run(harness, body)
