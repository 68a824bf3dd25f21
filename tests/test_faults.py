"""Fault injection on the local collector: what is delivered, what is duplicated, what the
policy gives up — and nothing else lost."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from conftest import API_KEY, ClientFactory, log_lines

from optimizely_odp_ext import (
    ODP_BATCH_DELIVERED,
    ODP_BATCH_FAILED,
    ODP_EVENTS_DROPPED,
    BatchEventManager,
    OdpOptimizely,
)
from optimizely_odp_ext.testing import OdpCollector, sample_datafile

FAST_RETRY = {"retry_initial_backoff": 0.02, "retry_max_backoff": 0.2}


def ids(collector: OdpCollector) -> list[str]:
    return [e["identifiers"]["fs_user_id"] for e in collector.events]


def send_many(client: OdpOptimizely, count: int, prefix: str = "") -> None:
    for i in range(count):
        assert client.send_odp_event("fault", {"fs_user_id": f"{prefix}{i}"})


def test_outage_loses_nothing_and_new_events_keep_flowing(make_client: ClientFactory, collector: OdpCollector,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(odp_event_manager=BatchEventManager(batch_size=50, flush_interval=0.01, **FAST_RETRY))
    collector.respond_with(503)
    send_many(client, 300, "during-")
    assert collector.wait_for_requests(3), "the manager keeps probing during the outage"
    assert client.flush(0.2) is False, "nothing can be delivered during the outage"
    assert client.odp_stats()["dropped_total"] == 0
    collector.reset_faults()
    send_many(client, 100, "after-")
    assert client.flush(20)
    assert sorted(ids(collector)) == sorted([f"during-{i}" for i in range(300)] + [f"after-{i}" for i in range(100)])
    assert collector.duplicates() == {}
    stats = client.odp_stats()
    assert stats["delivered"] == 400 and stats["retries"] > 0 and stats["dropped_total"] == 0
    assert any("HTTP 503" in line and "retry" in line for line in log_lines(caplog))


def test_429_with_retry_after_is_honoured(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(**FAST_RETRY))
    collector.respond_with(429, times=1, retry_after="1")
    send_many(client, 5)
    assert client.flush(20)
    refused, accepted = collector.requests[0], collector.requests[1]
    assert refused.status == 429 and accepted.status == 202
    assert accepted.received_at - refused.received_at >= 0.95, "waited as long as Retry-After said"
    assert sorted(ids(collector)) == [str(i) for i in range(5)]


def test_a_redirect_is_followed_as_requests_follows_it(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    collector.respond_with(307, times=1, location=f"{collector.url}/v3/events", body="")
    send_many(client, 5)
    assert client.flush(20)
    redirected, accepted = collector.requests[0], collector.requests[1]
    assert redirected.status == 307 and accepted.status == 202
    assert accepted.body == redirected.body, "the same body, sent again where the redirect points"
    assert {k.lower(): v for k, v in accepted.headers.items()}["x-api-key"] == API_KEY
    assert sorted(ids(collector)) == [str(i) for i in range(5)] and collector.duplicates() == {}


def test_one_poison_event_among_500_costs_exactly_that_event(make_client: ClientFactory,
                                                             collector: OdpCollector) -> None:
    manager = BatchEventManager(flush_interval=3600)
    client = make_client(odp_event_manager=manager)
    collector.reject_events(lambda event: event["data"].get("poison") is True, status=400)
    for i in range(500):
        assert client.send_odp_event("bulk", {"fs_user_id": str(i)}, data={"poison": i == 137})
    assert client.flush(20)
    assert sorted(ids(collector), key=int) == [str(i) for i in range(500) if i != 137]
    assert collector.duplicates() == {}
    assert manager.stats()["dropped"] == {"rejectedByServer": 1}
    assert manager.stats()["delivered"] == 499


def test_refused_key_waits_for_a_new_key_from_a_datafile_update(
    collector: OdpCollector, sdk_logger: logging.Logger, caplog: pytest.LogCaptureFixture,
) -> None:
    from optimizely.config_manager import PollingConfigManager

    from optimizely_odp_ext.testing import DatafileServer, RecordingEventDispatcher

    old = sample_datafile(collector.url, "revoked-key")
    new = sample_datafile(collector.url, API_KEY)
    new["revision"] = "8"
    with DatafileServer(old) as server:
        config = PollingConfigManager(url=server.url, update_interval=3600, blocking_timeout=5, logger=sdk_logger)
        assert config.get_config() is not None
        client = OdpOptimizely(config_manager=config, event_dispatcher=RecordingEventDispatcher(),
                               logger=sdk_logger, odp_event_manager=BatchEventManager(**FAST_RETRY))
        send_many(client, 10)
        assert collector.wait_for_requests(2), "refused, then tried again after a backoff"
        assert all(r.status == 401 for r in collector.requests)
        assert collector.event_count() == 0
        server.set_datafile(new)
        config.fetch_datafile()
        assert client.flush(20)
        client.close()
    assert sorted(ids(collector), key=int) == [str(i) for i in range(10)]
    assert collector.requests[-1].headers["x-api-key"] == API_KEY
    lines = log_lines(caplog, logging.DEBUG)
    assert any("is refused" in line for line in lines)
    assert not any("revoked-key" in line for line in lines), "the key is masked in the logs"


def test_connection_refused_then_server_comes_up(make_client: ClientFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = make_client(datafile=json.dumps(sample_datafile(url, API_KEY)),
                         odp_event_manager=BatchEventManager(**FAST_RETRY))
    send_many(client, 20)
    assert client.flush(0.3) is False
    with OdpCollector(api_key=API_KEY, port=port) as late:
        assert client.flush(20)
        assert sorted(ids(late), key=int) == [str(i) for i in range(20)]


def test_connection_reset_mid_request_is_retried(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(**FAST_RETRY))
    collector.drop_connections(times=2)
    send_many(client, 30)
    assert client.flush(20)
    assert sorted(ids(collector), key=int) == [str(i) for i in range(30)]
    assert collector.duplicates() == {}


def test_answers_slower_than_the_timeout_are_retried(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(request_timeout=0.2, **FAST_RETRY))
    collector.set_delay(0.5)
    send_many(client, 10)
    assert collector.wait_for_requests(2)
    collector.set_delay(0)
    assert client.flush(20)
    assert set(ids(collector)) == {str(i) for i in range(10)}
    # At-least-once: a batch the server finished after our timeout may arrive twice.
    assert all(count <= collector.request_count() for count in collector.duplicates().values())


def test_events_older_than_max_event_age_are_given_up_and_reported(make_client: ClientFactory,
                                                                   collector: OdpCollector) -> None:
    dropped: list[tuple[str, int]] = []
    client = make_client(odp_event_manager=BatchEventManager(max_event_age=1, **FAST_RETRY))
    client.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda r, n: dropped.append((r, n)))
    collector.respond_with(503)
    send_many(client, 5)
    assert client.flush(10)  # resolved: given up once older than a second
    assert client.odp_stats()["dropped"] == {"expired": 5}
    assert {reason for reason, _ in dropped} == {"expired"}
    assert sum(count for _, count in dropped) == 5  # one notice per expiry sweep
    assert collector.event_count() == 0


def test_notifications_for_delivered_failed_and_dropped(make_client: ClientFactory,
                                                        collector: OdpCollector) -> None:
    heard: dict[str, list[tuple[object, ...]]] = {"delivered": [], "failed": [], "dropped": []}
    done = threading.Event()
    client = make_client(odp_event_manager=BatchEventManager(batch_size=10, flush_interval=3600, **FAST_RETRY))
    center = client.notification_center
    center.add_notification_listener(ODP_BATCH_DELIVERED, lambda *a: (heard["delivered"].append(a), done.set()))
    center.add_notification_listener(ODP_BATCH_FAILED, lambda *a: heard["failed"].append(a))
    center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: heard["dropped"].append(a))
    collector.respond_with(500, times=1)
    send_many(client, 10)
    assert done.wait(10)
    collector.reject_events(lambda e: True, status=422)
    assert client.send_odp_event("poison", {"fs_user_id": "p"})
    assert client.flush(10)
    assert heard["delivered"] == [(collector.url, 10, 202)]
    [(host, count, status, retry_in)] = heard["failed"]
    assert (host, count, status) == (collector.url, 10, 500) and isinstance(retry_in, float)
    assert heard["dropped"] == [("rejectedByServer", 1)]


def test_close_does_not_wait_out_a_long_backoff_once_odp_is_back(make_client: ClientFactory,
                                                                collector: OdpCollector) -> None:
    manager = BatchEventManager(retry_initial_backoff=60, retry_max_backoff=60)
    client = make_client(odp_event_manager=manager)
    collector.respond_with(503, times=1)
    send_many(client, 5)
    assert collector.wait_for_requests(1)
    started = time.monotonic()
    client.close(timeout=10)
    assert time.monotonic() - started < 5, "close tried again at once instead of in a minute"
    assert collector.event_count() == 5 and manager.stats()["dropped_total"] == 0


def test_flush_keeps_a_retry_after_from_the_server(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(**FAST_RETRY))
    collector.respond_with(429, times=1, retry_after="30")
    send_many(client, 3)
    assert collector.wait_for_requests(1)
    assert client.flush(0.5) is False, "the server asked for 30 s; a flush does not cut that short"
    assert collector.request_count() == 1
    client.close(timeout=0.1)


def test_close_gives_up_within_its_bound_and_reports_what_was_left(make_client: ClientFactory,
                                                                  collector: OdpCollector,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    manager = BatchEventManager(**FAST_RETRY)
    client = make_client(odp_event_manager=manager)
    collector.respond_with(503)
    send_many(client, 7)
    started = time.monotonic()
    client.close(timeout=0.3)
    assert time.monotonic() - started < 5
    stats = manager.stats()
    assert stats["dropped"].get("shutdown", 0) + stats["in_flight"] == 7
    assert any("closed with 7 events undelivered" in line for line in log_lines(caplog, logging.ERROR))
