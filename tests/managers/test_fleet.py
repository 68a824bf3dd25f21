"""BatchEventManager on a shared spool (a real redis-server): the fleet, in one process.

The multi-process fleet (SIGKILL of a member, restarts, relays) is in tests/test_fleet_processes.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from conftest import API_KEY

from optimizely_odp_ext import BatchEventManager
from optimizely_odp_ext.event import build_event
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers.lifecycle import NullLogger
from optimizely_odp_ext.testing import OdpCollector
from optimizely_odp_ext.testing.redis_server import RedisServer

ManagerFactory = Callable[..., BatchEventManager]


@pytest.fixture
def make_member(redis_server: RedisServer, collector: OdpCollector) -> Iterator[ManagerFactory]:
    """Members of one fleet: managers on one stream, started with the collector as their ODP."""
    members: list[BatchEventManager] = []

    def make(**settings: Any) -> BatchEventManager:
        settings.setdefault("spool_url", redis_server.url)
        settings.setdefault("retry_initial_backoff", 0.02)
        settings.setdefault("retry_max_backoff", 0.1)
        manager = BatchEventManager(**settings)
        integration = OdpIntegration(collector.url, API_KEY)
        manager.start(logger=NullLogger(), notification_center=None, integration=integration)
        manager.integration_changed(integration)
        members.append(manager)
        return manager

    yield make
    for manager in members:
        manager.close(2)


def event(i: int, collector: OdpCollector) -> Any:
    built = build_event("fleet", {"fs_user_id": str(i)})
    built.integration = OdpIntegration(collector.url, API_KEY)
    return built


def users(collector: OdpCollector) -> list[int]:
    return sorted(int(e["identifiers"]["fs_user_id"]) for e in collector.events)


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_events_one_member_accepts_are_delivered_once_by_the_fleet(make_member: ManagerFactory,
                                                                   collector: OdpCollector) -> None:
    producer, other = make_member(), make_member()
    assert all(producer.send(event(i, collector)) for i in range(600))
    assert producer.flush(20), "appended, and the fleet delivered everything up to the last one"
    assert users(collector) == list(range(600)) and collector.duplicates() == {}
    # A member acknowledges in the stream (what flush() looks at) just before it counts the
    # delivery in its own stats: the other member's counters may lag the flush by a moment.
    assert wait_until(lambda: producer.stats()["delivered"] + other.stats()["delivered"] == 600)
    a, b = producer.stats(), other.stats()
    assert a["spooled"] == 600 and a["claimed"] + b["claimed"] == 600
    assert a["accepted"] + a["claimed"] == a["delivered"] + a["dropped_total"] + a["queued"] + a["in_flight"] \
        + a["spooled"], "this member's counters add up"


def test_a_producer_only_member_appends_and_a_relay_delivers(make_member: ManagerFactory,
                                                             collector: OdpCollector) -> None:
    relay = make_member()
    producer = make_member(deliver=False)
    assert all(producer.send(event(i, collector)) for i in range(300))
    assert producer.flush(10), "producer-only: flush means appended"
    assert producer.stats()["spooled"] == 300 and producer.stats()["claimed"] == 0
    assert relay.flush(10) and wait_until(lambda: collector.event_count() == 300)
    assert users(collector) == list(range(300)) and collector.duplicates() == {}


def test_redis_down_at_start_then_back_loses_nothing(make_member: ManagerFactory, collector: OdpCollector,
                                                     redis_server: RedisServer) -> None:
    redis_server.stop()
    member = make_member()
    began = time.monotonic()
    assert all(member.send(event(i, collector)) for i in range(200)), "accepted while Redis is down"
    assert time.monotonic() - began < 1.0, "send never waits for Redis"
    assert wait_until(lambda: member.stats()["spool"]["state"] == "failing")
    assert member.stats()["queued"] == 200
    redis_server.start()
    assert member.flush(20)
    assert users(collector) == list(range(200)) and collector.duplicates() == {}
    assert member.stats()["spool"]["state"] == "ok"


def test_closing_hands_claimed_events_back_to_the_fleet_at_once(make_member: ManagerFactory,
                                                                collector: OdpCollector) -> None:
    collector.respond_with(503)
    leaving = make_member(claim_after=600)  # without the hand-back, another would wait 10 minutes
    assert all(leaving.send(event(i, collector)) for i in range(50))
    assert wait_until(lambda: leaving.stats()["claimed"] == 50)
    assert leaving.close(0.2) is False
    assert wait_until(lambda: leaving.stats()["released"] == 50), "a request in flight at close comes back"
    assert leaving.stats()["dropped_total"] == 0
    collector.reset_faults()
    staying = make_member(claim_after=600)
    assert wait_until(lambda: collector.event_count() == 50), "taken over at once, not after claim_after"
    assert staying.stats()["claimed"] == 50 and users(collector) == list(range(50))
