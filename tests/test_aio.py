"""flush_async / close_async: awaited without blocking the event loop, with the timeout honoured,
and cancelling them stops the waiting, not the work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ClientFactory

from optimizely_odp_ext import DiscardReason, OdpOptimizely
from optimizely_odp_ext.testing import OdpCollector

GATE_LIMIT = 20.0
"""Most seconds the collector holds an answer if a test forgot to open the gate."""


@pytest.fixture
def gate(collector: OdpCollector) -> Iterator[threading.Event]:
    """While closed, the collector holds each accepted batch's answer: ODP is slow, for as long as the test says."""
    opened = threading.Event()

    def hold(event: object) -> None:
        opened.wait(GATE_LIMIT)

    collector.on_event = hold
    yield opened
    opened.set()


@pytest.fixture
def client(make_client: ClientFactory) -> OdpOptimizely:
    return make_client()


async def tick(times: int) -> int:
    """Yield to the event loop ``times`` times, as any other coroutine of the app would."""
    for _ in range(times):
        await asyncio.sleep(0.001)
    return times


def test_the_loop_keeps_running_while_flush_async_waits_for_a_slow_odp(
        client: OdpOptimizely, collector: OdpCollector, gate: threading.Event) -> None:
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"})

    async def main() -> bool:
        flushing = asyncio.create_task(client.flush_async(timeout=30))
        assert await tick(50) == 50, "other coroutines ran while the flush waited"
        assert not flushing.done(), "ODP has not answered yet"
        gate.set()
        return await flushing

    assert asyncio.run(main()) is True
    assert [e["identifiers"]["fs_user_id"] for e in collector.events] == ["u1"]


def test_flush_async_returns_false_when_its_timeout_runs_out(
        client: OdpOptimizely, collector: OdpCollector, gate: threading.Event) -> None:
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"})

    async def main() -> tuple[bool, int]:
        ticker = asyncio.create_task(tick(10))
        delivered = await asyncio.wait_for(client.flush_async(timeout=0.2), timeout=GATE_LIMIT / 2)
        return delivered, await ticker

    assert asyncio.run(main()) == (False, 10)
    assert collector.event_count() == 0, "it returned on its timeout, not because ODP answered"
    gate.set()
    assert client.flush(timeout=10)
    assert collector.event_count() == 1


def test_cancelling_flush_async_stops_the_waiting_and_loses_nothing(
        client: OdpOptimizely, collector: OdpCollector, gate: threading.Event) -> None:
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"})

    async def main() -> None:
        flushing = asyncio.create_task(client.flush_async(timeout=30))  # would wait for ODP
        await tick(5)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing

    asyncio.run(main())  # returns: asyncio.run does not wait for the flush's thread
    assert collector.event_count() == 0
    gate.set()
    assert client.flush(timeout=10)
    assert [e["identifiers"]["fs_user_id"] for e in collector.events] == ["u1"]
    assert collector.duplicates() == {}


def test_cancelling_close_async_does_not_undo_the_close_and_a_second_await_waits_for_it(
        client: OdpOptimizely, collector: OdpCollector, gate: threading.Event) -> None:
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"})

    async def main() -> None:
        closing = asyncio.create_task(client.close_async(timeout=30))
        await tick(5)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        refused = client.send_odp_event("late", {"fs_user_id": "u2"})
        assert not refused and refused.reason is DiscardReason.CLOSED, "the close goes on"
        again = asyncio.create_task(client.close_async())
        await tick(5)
        assert not again.done(), "waits for the close under way, not only for the flag"
        gate.set()
        await asyncio.wait_for(again, timeout=GATE_LIMIT)

    asyncio.run(main())
    assert [e["identifiers"]["fs_user_id"] for e in collector.events] == ["u1"]


def test_close_async_delivers_what_was_accepted_from_many_coroutines(
        client: OdpOptimizely, collector: OdpCollector) -> None:
    async def send(user: int) -> bool:
        await asyncio.sleep(0)
        return bool(client.send_odp_event("viewed", {"fs_user_id": f"u{user}"}))

    async def main() -> list[bool]:
        results = await asyncio.gather(*(send(i) for i in range(200)))
        await client.close_async(timeout=10)
        await client.close_async(timeout=10)  # idempotent
        return results

    assert all(asyncio.run(main()))
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == sorted(f"u{i}" for i in range(200))


def test_an_error_in_the_blocking_call_reaches_the_awaiting_coroutine() -> None:
    from optimizely_odp_ext import aio

    class Broken:
        def flush(self, timeout: float | None = None) -> bool:
            raise RuntimeError("flush failed")

        def close(self, timeout: float | None = None) -> Any:
            raise RuntimeError("close failed")

    with pytest.raises(RuntimeError, match="flush failed"):
        asyncio.run(aio.flush_async(Broken()))
    with pytest.raises(RuntimeError, match="close failed"):
        asyncio.run(aio.close_async(Broken()))
