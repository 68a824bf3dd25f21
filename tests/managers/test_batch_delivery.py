"""BatchEventManager: batching by count, bytes and interval; flush; capacity; concurrency."""

from __future__ import annotations

import json
import logging
import sys
import threading

import pytest
from conftest import ClientFactory, log_lines

from optimizely_odp_ext import BatchEventManager, DiscardReason, SettingError, encoding
from optimizely_odp_ext.managers import jobs
from optimizely_odp_ext.testing import OdpCollector


def request_sizes(collector: OdpCollector) -> list[int]:
    return [len(r.events) for r in collector.requests if r.status == 202]


def test_batches_by_count(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(batch_size=10, flush_interval=60))
    for i in range(25):
        assert client.send_odp_event("a", {"fs_user_id": str(i)})
    assert collector.wait_for_requests(2)
    assert request_sizes(collector) == [10, 10]
    assert client.odp_stats()["queued"] == 5, "the rest waits for its batch to fill"
    assert client.flush(10)
    assert sorted(request_sizes(collector)) == [5, 10, 10]


def test_batches_by_bytes(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(max_batch_bytes=4096, flush_interval=60))
    padding = "x" * 900
    for i in range(20):
        assert client.send_odp_event("a", {"fs_user_id": str(i)}, data={"padding": padding})
    assert client.flush(10)
    assert collector.event_count() == 20
    assert all(len(r.body) <= 4096 for r in collector.requests)
    assert len(collector.requests) >= 5


def test_batches_by_interval_without_flush(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=0.05))
    assert client.send_odp_event("lonely", {"fs_user_id": "u"})
    assert collector.wait_for_events(1, timeout=10), "an isolated event goes out after the flush interval"
    assert request_sizes(collector) == [1]


def test_flush_wakes_the_sender_at_once(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=3600))
    assert client.send_odp_event("a", {"fs_user_id": "u"})
    assert client.flush(10), "flush does not wait for the hour-long interval"
    assert collector.event_count() == 1


def test_flush_with_no_time_to_wait_still_sends_at_once(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=3600))
    for i in range(3):
        assert client.send_odp_event("a", {"fs_user_id": str(i)})
    client.flush(0)  # returns at once, True only if there was nothing to send
    assert collector.wait_for_events(3, timeout=10), "flush(0) sends now; it only does not wait"
    assert client.send_odp_event("later", {"fs_user_id": "u"})
    assert collector.wait_for_requests(1) and client.odp_stats()["queued"] == 1, \
        "an event accepted after the flush waits for its batch again"
    assert request_sizes(collector) == [3]


def test_capacity_in_events_refuses_the_newest_at_the_edge(make_client: ClientFactory, collector: OdpCollector,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(odp_event_manager=BatchEventManager(max_queue_events=5, flush_interval=3600))
    for i in range(5):
        assert client.send_odp_event("kept", {"fs_user_id": str(i)})
    caplog.clear()
    refused = client.send_odp_event("refused", {"fs_user_id": "6"})
    assert not refused and refused.reason is DiscardReason.QUEUE_FULL
    assert log_lines(caplog) == [refused.message]
    assert client.odp_stats()["refused"] == {"queueFull": 1}
    assert client.flush(10)
    assert [e["action"] for e in collector.events] == ["kept"] * 5
    assert client.send_odp_event("room-again", {"fs_user_id": "7"}), "delivered events free their room"


def test_capacity_in_bytes(make_client: ClientFactory, collector: OdpCollector) -> None:
    manager = BatchEventManager(max_queue_bytes=8192, flush_interval=3600)
    client = make_client(odp_event_manager=manager)
    results = [client.send_odp_event("a", {"fs_user_id": str(i)}, data={"p": "y" * 1000}) for i in range(30)]
    accepted = sum(1 for r in results if r)
    assert 0 < accepted < 30
    assert {r.reason for r in results if not r} == {DiscardReason.QUEUE_FULL}
    assert client.flush(10)
    assert collector.event_count() == accepted
    assert client.odp_stats()["refused"] == {"queueFull": 30 - accepted}
    assert manager.stats()["dropped"] == {}, "a refusal is not an accepted event given up"


def test_sixteen_producers_with_concurrent_requests_deliver_every_event_exactly_once(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    collector.set_delay(0.005)
    client = make_client(odp_event_manager=BatchEventManager(batch_size=25, max_in_flight=4, flush_interval=0.01))
    per_thread = 300
    refused: list[object] = []

    def produce(thread: int) -> None:
        for i in range(per_thread):
            result = client.send_odp_event("load", {"fs_user_id": f"{thread}-{i}"})
            if not result:
                refused.append(result)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(30)
    assert refused == []
    received = [e["identifiers"]["fs_user_id"] for e in collector.events]
    assert len(received) == 16 * per_thread
    assert set(received) == {f"{t}-{i}" for t in range(16) for i in range(per_thread)}
    assert collector.duplicates() == {}
    assert max(request_sizes(collector)) <= 25
    stats = client.odp_stats()
    assert stats["delivered"] == 16 * per_thread and stats["in_flight"] == 0 and stats["queued"] == 0


def test_requests_go_out_several_at_a_time_while_odp_is_slow_to_answer(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    collector.set_delay(0.1)
    client = make_client(odp_event_manager=BatchEventManager(batch_size=50, max_in_flight=3, flush_interval=0.01))
    for i in range(1000):
        assert client.send_odp_event("slow", {"fs_user_id": str(i)})
    assert client.flush(30)
    assert collector.event_count() == 1000 and collector.duplicates() == {}
    assert 2 <= collector.connections_opened() <= 3, "a connection per request in flight, up to max_in_flight"


@pytest.mark.parametrize(("took", "busy", "waited"), [
    (0.050, 0.0, 0.050),  # an idle process: all of it was ODP's
    (0.050, 1.0, 0.035),  # a busy one: less 3 turns of the GIL (5 ms each)
    (0.050, 0.5, 0.0425),
    (0.012, 1.0, 0.0),  # never below nothing
    (0.050, 1.7, 0.035),  # threads that ran without the GIL do not make it wait longer
])
def test_a_request_waited_for_odp_its_time_less_the_turns_of_the_gil_a_busy_process_made_it_wait(
    took: float, busy: float, waited: float,
) -> None:
    assert sys.getswitchinterval() == 0.005
    assert jobs.waited_on_odp(took, busy) == pytest.approx(waited)


def test_settings_come_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_BATCH_SIZE", "50")
    monkeypatch.setenv("OPTIMIZELY_ODP_FLUSH_INTERVAL", "2.5")
    manager = BatchEventManager(flush_interval=0.5)
    assert manager.settings.batch_size == 50 and manager.settings.sources["batch_size"] == "environment"
    assert manager.settings.flush_interval == 0.5 and manager.settings.sources["flush_interval"] == "argument"
    assert manager.settings.max_in_flight == 4 and manager.settings.sources["max_in_flight"] == "default"
    manager.close()


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        ({"batch_size": 501}, {}, "argument batch_size must be a whole number from 1 to 500, not 501"),
        ({"batch_size": "10"}, {}, "argument batch_size must be a whole number from 1 to 500, not str: '10'"),
        ({}, {"OPTIMIZELY_ODP_MAX_IN_FLIGHT": "many"},
         "OPTIMIZELY_ODP_MAX_IN_FLIGHT='many' is not valid: max_in_flight must be a whole number from 1 to 64"),
        ({}, {"OPTIMIZELY_ODP_FLUSH_INTERVAL": "-1"},
         "OPTIMIZELY_ODP_FLUSH_INTERVAL must be a number from 0 to 3600, not -1.0"),
        ({}, {"OPTIMIZELY_ODP_REQUEST_TIMEOUT": "nan"},
         "OPTIMIZELY_ODP_REQUEST_TIMEOUT must be a number from 0.01 to 600, not nan"),
        ({"max_event_age": float("nan")}, {}, "argument max_event_age must be a number of at least 1, not nan"),
        ({"spool_url": "redis://user:hunter2@localhost/0", "spool_path": "/tmp/x"}, {},
         "spool_path and spool_url cannot both be set"),
        ({}, {"OPTIMIZELY_ODP_DELIVER": "0"}, "deliver=False needs a shared spool (spool_url)"),
        ({"spool_url": "http://user:hunter2@example.invalid/0"}, {},
         "spool_url must be a redis://, rediss:// or unix:// URL, not 'http://user:***@example.invalid/0'"),
        ({"no_such_setting": 1}, {}, "unknown ODP event manager setting(s): no_such_setting"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, arguments: dict[str, object],
                                       environment: dict[str, str], message: str) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as raised:
        BatchEventManager(**arguments)
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_spool_url_with_a_password_is_masked_in_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_SPOOL_URL", "redis://:hunter2@localhost:6379/0")
    monkeypatch.setenv("OPTIMIZELY_ODP_CLAIM_AFTER", "soon")
    with pytest.raises(SettingError, match=r"claim_after must be a number from 0\.1 to 86400"):
        BatchEventManager()
    with pytest.raises(SettingError) as raised:
        BatchEventManager(spool_url=1234)  # type: ignore[arg-type]
    assert "hunter2" not in str(raised.value)


def test_stats_after_a_burst_show_batches_and_requests(make_client: ClientFactory, collector: OdpCollector,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    for i in range(1200):
        client.send_odp_event("burst", {"fs_user_id": str(i)})
    assert client.flush(30)
    stats = client.odp_stats()
    assert stats["delivered"] == 1200 and stats["batches_sent"] >= 3 and stats["requests"] == stats["batches_sent"]
    assert all(len(json.loads(r.body)) <= 500 for r in collector.requests)
    assert log_lines(caplog, logging.WARNING) == []


def test_a_large_batch_is_sent_in_pieces_with_its_length_and_the_same_bytes(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    """A body over PIECE_BYTES is joined a piece at a time while it is sent (no second copy of
    its events): the server still gets one Content-Length body, json.dumps of the events."""
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=60))
    padding = "é" * 2_000  # escaped as \\u00e9: ~12 KB of JSON per event
    for i in range(40):
        assert client.send_odp_event("big", {"fs_user_id": str(i)}, data={"padding": padding, "n": i})
    assert client.flush(10)
    [request] = collector.requests
    assert len(request.body) > encoding.PIECE_BYTES, "large enough to be sent in pieces"
    assert request.headers["content-length"] == str(len(request.body))
    assert "transfer-encoding" not in request.headers
    assert request.body == json.dumps(request.events).encode(), "the official client's bytes"
    assert [e["data"]["n"] for e in request.events] == list(range(40))
