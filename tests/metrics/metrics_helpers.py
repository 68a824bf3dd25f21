"""What both exporters' tests share: a client with a known history of real deliveries, and
stats dicts carrying every key of the odp_stats() contract."""

from __future__ import annotations

from typing import Any

from conftest import ClientFactory

from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import OdpCollector


def client_with_history(make_client: ClientFactory, collector: OdpCollector) -> OdpOptimizely:
    """A client that sent 3 events through the collector: 2 delivered, 1 refused by the server
    (rejectedByServer), and made one call refused at send (invalidAction). All resolved."""
    collector.reject_events(lambda event: event["data"].get("poison") is True, status=400)
    client = make_client()
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"}, data={"price": 1.5})
    assert client.send_odp_event("purchase", {"fs_user_id": "u2"}, data={"poison": True})
    assert client.send_odp_event("viewed", {"fs_user_id": "u3"})
    assert not client.send_odp_event("", {"fs_user_id": "u4"})
    assert client.flush(timeout=10)
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == ["u1", "u3"]
    return client


class StatsDict:
    """A stats source returning a fixed dict (an event manager of tomorrow, or a custom one)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats
        self.calls = 0

    def odp_stats(self) -> dict[str, Any]:
        self.calls += 1
        return self.stats


class CountingSource:
    """A client's odp_stats(), counting the calls."""

    def __init__(self, client: OdpOptimizely) -> None:
        self.client = client
        self.calls = 0

    def odp_stats(self) -> dict[str, Any]:
        self.calls += 1
        return self.client.odp_stats()


FULL_CONTRACT_STATS: dict[str, Any] = {
    "accepted": 120,
    "delivered": 100,
    "dropped": {"expired": 3, "rejectedByServer": 2},
    "dropped_total": 5,
    "refused": {"invalidData": 4, "queueFull": 1},
    "refused_total": 5,
    "queued": 10,
    "queued_bytes": 3000,
    "in_flight": 5,
    "held_for_datafile": 0,
    "requests": 9,
    "batches_sent": 7,
    "retries": 2,
    "recovered": 6,
    "spooled": 0,
    "claimed": 0,
    "released": 0,
    "lost_claims": 0,
    "waiting_to_store": 0,
    "spool": {"kind": "sqlite", "state": "ok", "description": "/var/tmp/odp.sqlite", "events": 15,
              "bytes": 4500, "pending": 5, "oldest_accepted_at": 1700000000.5},
    "destinations": {"https://api.zaius.com": {"delivered": 100, "dropped_total": 5, "requests": 9,
                                               "retries": 2, "queued": 10, "in_flight": 5}},
}
"""Every key of the odp_stats() contract (COMMON.md) and BatchEventManager's own keys (README),
plus the proposed ``destinations``."""
