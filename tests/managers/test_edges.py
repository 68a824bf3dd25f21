"""The managers' promises at their edges: bounded waits, exact bounds, nothing lost untraced."""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory

from optimizely_odp_ext import BatchEventManager, SyncEventManager, encoding
from optimizely_odp_ext.event import build_event
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers import batch as batch_module
from optimizely_odp_ext.managers.batching import WAITING_OVERHEAD
from optimizely_odp_ext.managers.lifecycle import NullLogger
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.spool import SqliteSpool
from optimizely_odp_ext.testing import OdpCollector

FAST_RETRY = {"retry_initial_backoff": 0.02, "retry_max_backoff": 0.1}


def started(manager: Any, integration: OdpIntegration | None = None) -> Any:
    manager.start(logger=NullLogger(), notification_center=None, integration=integration)
    if integration is not None:
        manager.integration_changed(integration)
    return manager


def event(i: int, integration: OdpIntegration | None) -> Any:
    built = build_event("edge", {"fs_user_id": str(i)})
    built.integration = integration
    return built


# -- bounded waits ------------------------------------------------------------------------------
def test_sync_flush_and_close_are_bounded_by_their_timeout_not_the_request_timeout(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    collector.set_delay(60)  # accepts the connection, never answers in time
    client = make_client(odp_event_manager=SyncEventManager(request_timeout=10, close_timeout=1.5))
    assert client.send_odp_event("slow", {"fs_user_id": "u"})
    began = time.monotonic()
    assert client.flush(0.5) is False
    assert time.monotonic() - began < 2.5, "the request was cut to the time the flush had left"
    began = time.monotonic()
    client.close()
    assert time.monotonic() - began < 4.0, "close() kept to close_timeout, not request_timeout"


def test_a_queue_full_refusal_does_not_wait_while_a_worker_cuts_a_batch(
        monkeypatch: pytest.MonkeyPatch, collector: OdpCollector) -> None:
    entered, release = threading.Event(), threading.Event()
    real_join = encoding.join

    def slow_join(bodies: Any) -> bytes:
        entered.set()
        release.wait(30)
        return real_join(bodies)

    monkeypatch.setattr(encoding, "join", slow_join)
    integration = OdpIntegration(collector.url, API_KEY)
    manager = started(BatchEventManager(max_queue_events=10, batch_size=10, flush_interval=3600), integration)
    try:
        assert all(manager.send(event(i, integration)) for i in range(10))
        assert entered.wait(10), "a worker is joining the full batch"
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(manager.send(event(99, integration))))
        caller.start()
        caller.join(2.0)
        assert answers and answers[0].reason is DiscardReason.QUEUE_FULL, "refused without waiting"
    finally:
        release.set()
    assert manager.flush(10)
    manager.close()
    assert collector.event_count() == 10


def test_flush_without_a_timeout_gives_up_after_the_default_bound(
        monkeypatch: pytest.MonkeyPatch, collector: OdpCollector) -> None:
    monkeypatch.setattr(batch_module, "DEFAULT_FLUSH_TIMEOUT", 0.5)
    collector.respond_with(503)
    integration = OdpIntegration(collector.url, API_KEY)
    manager = started(BatchEventManager(**FAST_RETRY), integration)
    assert manager.send(event(1, integration))
    began = time.monotonic()
    assert manager.flush() is False
    assert time.monotonic() - began < 5
    manager.close(0)


@pytest.mark.parametrize("manager", [BatchEventManager, SyncEventManager])
@pytest.mark.parametrize("timeout", [math.inf, 1e10])
def test_flush_and_close_take_an_endless_timeout_as_a_long_wait_not_an_error(
        make_client: ClientFactory, collector: OdpCollector, manager: Any, timeout: float) -> None:
    """``threading`` refuses waits beyond ``TIMEOUT_MAX`` (OverflowError): a caller asking to wait
    "forever" gets the longest wait there is, and close() still stops the manager."""
    client = make_client(odp_event_manager=manager())
    assert client.send_odp_event("first", {"fs_user_id": "u1"})
    assert client.flush(timeout) is True
    assert client.send_odp_event("second", {"fs_user_id": "u2"})
    client.close(timeout)
    assert [e["action"] for e in collector.events] == ["first", "second"]
    stats = client.odp_stats()
    assert stats["delivered"] == 2 and stats["queued"] == 0
    assert not client.send_odp_event("late", {"fs_user_id": "u3"}), "closed for good"


def test_the_event_bound_is_exact_with_many_callers(collector: OdpCollector) -> None:
    collector.respond_with(503)  # nothing resolves: every accepted event stays held
    integration = OdpIntegration(collector.url, API_KEY)
    manager = started(BatchEventManager(max_queue_events=5_000, **FAST_RETRY), integration)
    accepted = [0] * 8

    def caller(n: int) -> None:
        accepted[n] = sum(1 for i in range(2_000) if manager.send(event(i, integration)))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(accepted) == 5_000 == manager.stats()["accepted"]
    manager.close(0)


# -- nothing lost without a trace -----------------------------------------------------------------
def test_parked_events_wait_in_the_spool_for_a_datafile_that_says_where(
        tmp_path: Path, collector: OdpCollector) -> None:
    path = str(tmp_path / "spool.db")
    first = started(BatchEventManager(spool_path=path))
    assert first.park([event(i, None) for i in range(3)]) == 3
    first.close(0)
    assert SqliteSpool.inspect(path)["events"] == 3

    second = started(BatchEventManager(spool_path=path))
    assert second.flush(0.5) is False, "no destination yet: they wait"
    assert second.stats()["spool"]["awaiting_destination"] == 3
    second.integration_changed(OdpIntegration(collector.url, API_KEY))
    assert second.flush(10)
    stats = second.stats()
    second.close()
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == ["0", "1", "2"]
    assert SqliteSpool.inspect(path)["events"] == 0
    assert stats["recovered"] == 3


def test_parked_events_are_given_up_counted_when_the_datafile_says_not_integrated(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.db")
    first = started(BatchEventManager(spool_path=path))
    first.park([event(i, None) for i in range(2)])
    first.close(0)
    second = BatchEventManager(spool_path=path)
    second.start(logger=NullLogger(), notification_center=None, integration=None)
    second.integration_changed(None)
    assert second.flush(10)
    stats = second.stats()
    assert stats["dropped"] == {"odpNotIntegrated": 2} and stats["recovered"] == 2 and stats["queued"] == 0
    second.close()
    assert SqliteSpool.inspect(path)["events"] == 0


def test_counters_add_up_and_memory_returns_after_retries_splits_and_refusals(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    manager = BatchEventManager(batch_size=50, flush_interval=0.01, max_queue_events=400, **FAST_RETRY)
    client = make_client(odp_event_manager=manager)
    collector.reject_events(lambda e: e["identifiers"]["fs_user_id"].endswith("7"))
    collector.respond_with(503, times=3)
    results = [client.send_odp_event("mix", {"fs_user_id": str(i)}) for i in range(500)]
    assert client.flush(20)
    stats = manager.stats()
    accepted = sum(1 for r in results if r)
    assert stats["accepted"] == accepted and 0 < accepted < 500
    assert stats["delivered"] + stats["dropped_total"] + stats["queued"] + stats["in_flight"] == accepted
    assert stats["dropped"] == {"rejectedByServer": sum(1 for i in range(accepted) if str(i).endswith("7"))}
    assert (stats["queued"], stats["queued_bytes"], stats["in_flight"]) == (0, 0, 0)
    assert stats["retries"] >= 3 and stats["requests"] > stats["batches_sent"]


def test_a_burst_of_large_events_after_small_ones_stays_within_max_queue_bytes(collector: OdpCollector) -> None:
    collector.respond_with(503)  # an outage: everything accepted stays queued
    integration = OdpIntegration(collector.url, API_KEY)
    cap = 4 * 1024 * 1024
    manager = started(BatchEventManager(max_queue_bytes=cap, max_queue_events=10**6, **FAST_RETRY), integration)
    small = [manager.send(event(i, integration)) for i in range(200)]
    large = build_event("edge", {"fs_user_id": "big"}, data={"blob": "x" * 20_000})
    large.integration = integration
    accepted = sum(1 for _ in range(2_000) if manager.send(large))
    assert all(small) and 0 < accepted < 2_000
    assert manager.stats()["queued_bytes"] <= cap, "each event is counted at its own encoded size"
    manager.flush(0.5)  # cuts every waiting event into batches (nothing can be delivered)
    assert manager.stats()["queued_bytes"] <= cap
    manager.close(0)


def test_queued_bytes_is_each_waiting_events_json_and_a_fixed_overhead(collector: OdpCollector) -> None:
    integration = OdpIntegration(collector.url, API_KEY)
    manager = started(BatchEventManager(flush_interval=3600, max_queue_events=10**6), integration)
    for i in range(50):
        built = build_event("size", {"fs_user_id": f"u{i}"}, data={"text": "é" * i, "n": i, "x": i / 3})
        built.integration = integration
        assert manager.send(built)
    queued_bytes = manager.stats()["queued_bytes"]
    assert manager.flush(10) and collector.wait_for_events(50)
    sent = sum(len(json.dumps(e)) for e in collector.events)  # each event's bytes, as sent
    assert queued_bytes == sent + 50 * WAITING_OVERHEAD
    manager.close()


def test_a_full_garbage_collection_does_not_walk_the_waiting_events(collector: OdpCollector) -> None:
    """A full GC pass over a big backlog paused the caller ~20 ms per 100,000 events: waiting
    events must be left out of it, and still arrive with every field as sent."""
    integration = OdpIntegration(collector.url, API_KEY)
    manager = started(BatchEventManager(flush_interval=3600, batch_size=500, max_queue_events=10**6), integration)
    data = {"plan": "pro", "seats": 3, "ratio": 0.5, "trial": False, "note": None}
    for i in range(300):
        built = (build_event("gc-check", {"fs_user_id": f"u{i}", "email": f"u{i}@example.com"}, data=data)
                 if i % 2 else build_event("gc-check", {"fs_user_id": i}))
        built.integration = integration
        assert manager.send(built)
    assert manager.stats()["queued"] == 300, "nothing was cut into a batch yet"
    gc.collect()
    waiting = [item for dest in manager._ledger.destinations.values() for item in dest.waiting]
    assert len(waiting) == 300
    tracked = [item for item in waiting if gc.is_tracked(item)]
    assert tracked == [], f"{len(tracked)} waiting events are still tracked by the garbage collector"
    assert manager.flush(10) and collector.wait_for_events(300)
    received = {str(e["identifiers"]["fs_user_id"]): e for e in collector.events}
    assert received["u1"]["identifiers"] == {"fs_user_id": "u1", "email": "u1@example.com"}
    assert {k: received["u1"]["data"][k] for k in data} == data
    assert received["2"]["identifiers"] == {"fs_user_id": 2} and "plan" not in received["2"]["data"]
    manager.close()


def test_a_long_outage_logs_a_failed_request_once_per_interval_with_a_count(
        make_client: ClientFactory, collector: OdpCollector, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from conftest import log_lines

    collector.respond_with(503)
    manager = BatchEventManager(retry_initial_backoff=0.001, retry_max_backoff=0.002)
    client = make_client(odp_event_manager=manager)
    assert client.send_odp_event("down", {"fs_user_id": "u"})
    assert collector.wait_for_requests(30), "many failed attempts"
    manager.close(0)
    retries = manager.stats()["retries"]
    lines = [line for line in log_lines(caplog, logging.WARNING) if "HTTP 503" in line or "failed requests" in line]
    assert retries >= 29 and len(lines) <= 3, lines
    assert any(line.startswith("... and ") and "more failed requests kept for a retry" in line for line in lines)


def test_stats_per_destination_host_never_name_the_key(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=0.01))
    collector.respond_with(503, times=1)
    collector.reject_events(lambda e: e["action"] == "poison")
    for i in range(10):
        assert client.send_odp_event("poison" if i == 4 else "ok", {"fs_user_id": str(i)})
    assert client.flush(10)
    figures = client.odp_stats()["destinations"]
    assert list(figures) == [collector.url] and API_KEY not in repr(figures)
    host = figures[collector.url]
    assert (host["delivered"], host["dropped_total"], host["queued"], host["in_flight"]) == (9, 1, 0, 0)
    assert host["retries"] >= 1 and host["requests"] >= 3
