"""SyncEventManager: delivery on the caller's thread, in both modes, against the local collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory, log_lines

from optimizely_odp_ext import (
    ODP_BATCH_DELIVERED,
    ODP_BATCH_FAILED,
    ODP_EVENTS_DROPPED,
    BatchEventManager,
    DiscardReason,
    OdpEvent,
    OdpIntegration,
    OdpOptimizely,
    SettingError,
    SyncEventManager,
)
from optimizely_odp_ext.testing import OdpCollector

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = {"retry_initial_backoff": 0.01, "retry_max_backoff": 0.02}


def sizes(collector: OdpCollector) -> list[int]:
    return [len(r.events) for r in collector.requests if r.status == 202]


def actions(collector: OdpCollector) -> list[str]:
    return [e["action"] for e in collector.events]


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["idempotence_id"] for e in events]


def listen(client: OdpOptimizely, kind: str) -> list[tuple[Any, ...]]:
    heard: list[tuple[Any, ...]] = []
    client.notification_center.add_notification_listener(kind, lambda *args: heard.append(args))
    return heard


@pytest.fixture
def threads_started(collector: OdpCollector, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads started from the test's own thread from now on (the collector, already
    running, starts its connection threads from its server thread)."""
    caller, started = threading.current_thread(), []
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if threading.current_thread() is caller:
            started.append(thread.name)
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


# -- per_call -----------------------------------------------------------------------------------
def test_per_call_delivers_before_send_returns(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(mode="per_call"))
    delivered = listen(client, ODP_BATCH_DELIVERED)
    for i in range(3):
        assert client.send_odp_event("purchase", {"fs_user_id": f"u{i}"}, data={"n": i})
        assert collector.event_count() == i + 1, "no waiting: the POST was made inside send"
        assert len(delivered) == i + 1, "the notification fired on the caller's thread, before send returned"
    assert sizes(collector) == [1, 1, 1]
    assert delivered[0] == (collector.url, 1, 202)
    stats = client.odp_stats()
    assert (stats["accepted"], stats["delivered"], stats["requests"], stats["queued"], stats["in_flight"]) == (
        3, 3, 3, 0, 0)


def test_per_call_send_is_bounded_by_request_timeout_and_keeps_the_event(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(mode="per_call", request_timeout=0.2))
    collector.set_delay(3)
    started = time.monotonic()
    assert client.send_odp_event("slow", {"fs_user_id": "u"}), "accepted, whatever the POST's fate"
    assert time.monotonic() - started < 2
    assert client.odp_stats()["queued"] == 1 and client.odp_stats()["retries"] == 1
    collector.set_delay(0)
    assert client.flush(10)
    assert len(set(ids(collector.events))) == 1, "a retry resends the same bytes, same idempotence id"


def test_per_call_outage_keeps_events_for_the_next_send_then_flush(make_client: ClientFactory,
                                                                   collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(mode="per_call", retry_initial_backoff=0))
    failed = listen(client, ODP_BATCH_FAILED)
    collector.stop()  # connection refused
    assert client.send_odp_event("first", {"fs_user_id": "u"})
    assert client.odp_stats()["queued"] == 1 and failed[0][0:3] == (collector.url, 1, 0)
    collector.start()  # same port
    assert client.send_odp_event("second", {"fs_user_id": "u"})
    assert actions(collector) == ["first"], "one POST per send: the older batch waiting for its retry"
    assert client.flush(10)
    assert actions(collector) == ["first", "second"]


def test_per_call_backoff_spares_the_caller_and_events_count_against_capacity(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    manager = SyncEventManager(mode="per_call", max_queue_events=2, retry_initial_backoff=60)
    client = make_client(odp_event_manager=manager)
    collector.respond_with(503)
    assert client.send_odp_event("a", {"fs_user_id": "u"})
    assert client.send_odp_event("b", {"fs_user_id": "u"})
    assert collector.request_count() == 1, "while backing off, send only buffers"
    refused = client.send_odp_event("c", {"fs_user_id": "u"})
    assert not refused and refused.reason is DiscardReason.QUEUE_FULL
    assert client.odp_stats()["refused"] == {"queueFull": 1} and manager.stats()["dropped"] == {}
    client.close(timeout=0.1)  # ODP stays down: don't spend the fixture's close timeout retrying


def test_per_call_poison_event_is_dropped_and_counted_send_still_accepted(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(mode="per_call"))
    dropped = listen(client, ODP_EVENTS_DROPPED)
    collector.reject_events(lambda e: e["action"] == "poison")
    assert client.send_odp_event("poison", {"fs_user_id": "u"}), "accepted for delivery; refused later"
    assert dropped == [("rejectedByServer", 1)]
    assert client.send_odp_event("fine", {"fs_user_id": "u"})
    assert actions(collector) == ["fine"]
    assert client.odp_stats()["dropped"] == {"rejectedByServer": 1}


# -- batch --------------------------------------------------------------------------------------
def test_batch_mode_sends_nothing_until_flush_then_batches_of_batch_size(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(batch_size=10))
    for i in range(25):
        assert client.send_odp_event("a", {"fs_user_id": str(i)})
    assert collector.request_count() == 0
    assert client.odp_stats()["queued"] == 25
    assert client.flush(10)
    assert sizes(collector) == [10, 10, 5]
    assert [e["identifiers"]["fs_user_id"] for e in collector.events] == [str(i) for i in range(25)]
    stats = client.odp_stats()
    assert (stats["delivered"], stats["batches_sent"], stats["requests"], stats["queued"]) == (25, 3, 3, 0)


def test_batch_mode_cuts_batches_by_bytes_too(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(max_batch_bytes=4096))
    for i in range(12):
        client.send_odp_event("a", {"fs_user_id": str(i)}, data={"padding": "x" * 900})
    assert client.flush(10)
    assert collector.event_count() == 12 and all(len(r.body) <= 4096 for r in collector.requests)


@pytest.mark.parametrize("mode", ["batch", "per_call"])
def test_no_thread_is_started(mode: str, threads_started: list[str], datafile: str, collector: OdpCollector,
                              sdk_logger: Any) -> None:
    from optimizely.event.event_processor import ForwardingEventProcessor

    from optimizely_odp_ext.testing import RecordingEventDispatcher

    # optimizely-sdk 5.x's default BatchEventProcessor (impressions) has a thread of its own; not ours.
    dispatcher = RecordingEventDispatcher()
    client = OdpOptimizely(datafile=datafile, event_dispatcher=dispatcher, logger=sdk_logger,
                           event_processor=ForwardingEventProcessor(dispatcher),
                           odp_event_manager=SyncEventManager(mode=mode))  # type: ignore[arg-type]
    user = client.create_user_context("u")
    assert user is not None
    user.decide("checkout_redesign")
    for i in range(20):
        assert client.send_odp_event("a", {"fs_user_id": str(i)})
    assert client.flush(10)
    client.close()
    assert collector.event_count() == 20
    assert threads_started == []
    assert len(dispatcher.events) == 1, "the impression was dispatched on the caller's thread"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("odp-")]


def test_outage_flush_returns_false_keeps_events_next_flush_delivers_the_same_bytes(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(**FAST_RETRY))  # type: ignore[arg-type]
    failed = listen(client, ODP_BATCH_FAILED)
    for i in range(5):
        client.send_odp_event("a", {"fs_user_id": str(i)})
    collector.respond_with(503)
    assert not client.flush(0.5)
    assert collector.request_count() >= 2, "retried within the flush timeout"
    stats = client.odp_stats()
    assert (stats["queued"], stats["delivered"], stats["dropped_total"]) == (5, 0, 0)
    assert stats["retries"] == len(failed) and failed[0][:3] == (collector.url, 5, 503)
    first_attempt = ids(collector.requests[0].events)
    collector.reset_faults()
    assert client.flush(10)
    assert ids(collector.events) == first_attempt and collector.duplicates() == {}


def test_flush_gives_up_at_once_when_the_next_retry_is_due_after_its_timeout(
        make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager())
    client.send_odp_event("a", {"fs_user_id": "u"})
    collector.respond_with(429, retry_after="30")
    started = time.monotonic()
    assert not client.flush(5)
    assert time.monotonic() - started < 2, "no point waiting for a retry due after the timeout"
    assert client.odp_stats()["queued"] == 1


def test_poison_event_is_isolated_and_the_rest_delivered_in_order(make_client: ClientFactory,
                                                                  collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager())
    dropped = listen(client, ODP_EVENTS_DROPPED)
    collector.reject_events(lambda e: e["action"] == "poison", status=422)
    names = ["g0", "g1", "g2", "poison", "g4", "g5", "g6", "g7"]
    for name in names:
        client.send_odp_event(name, {"fs_user_id": "u"})
    assert client.flush(10)
    assert actions(collector) == [n for n in names if n != "poison"]
    assert dropped == [("rejectedByServer", 1)]
    assert client.odp_stats()["dropped"] == {"rejectedByServer": 1}


def test_queue_full_refuses_the_newest_and_flush_makes_room(make_client: ClientFactory, collector: OdpCollector,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(odp_event_manager=SyncEventManager(max_queue_events=3))
    for i in range(3):
        assert client.send_odp_event("kept", {"fs_user_id": str(i)})
    caplog.clear()
    refused = client.send_odp_event("refused", {"fs_user_id": "x"})
    assert not refused and refused.reason is DiscardReason.QUEUE_FULL
    assert log_lines(caplog) == [refused.message]
    assert client.flush(10)
    assert client.send_odp_event("room-again", {"fs_user_id": "y"})
    assert client.odp_stats()["refused"] == {"queueFull": 1}


def test_close_delivers_is_idempotent_and_send_after_close_is_closed(make_client: ClientFactory,
                                                                     collector: OdpCollector) -> None:
    manager = SyncEventManager()
    client = make_client(odp_event_manager=manager)
    client.send_odp_event("a", {"fs_user_id": "u"})
    client.send_odp_event("b", {"fs_user_id": "u"})
    client.close()
    assert actions(collector) == ["a", "b"]
    client.close()
    assert manager.close() is True, "a second close returns the first one's result"
    result = client.send_odp_event("late", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.CLOSED
    direct = manager.send(OdpEvent("fullstack", "late", {"fs_user_id": "u"},
                                   integration=OdpIntegration(collector.url, API_KEY)))
    assert not direct and direct.reason is DiscardReason.CLOSED
    assert collector.event_count() == 2


def test_close_drops_what_it_cannot_deliver_in_time(make_client: ClientFactory, collector: OdpCollector) -> None:
    manager = SyncEventManager(**FAST_RETRY)  # type: ignore[arg-type]
    client = make_client(odp_event_manager=manager)
    dropped = listen(client, ODP_EVENTS_DROPPED)
    for i in range(3):
        client.send_odp_event("a", {"fs_user_id": str(i)})
    collector.respond_with(503)
    assert manager.close(0.3) is False
    assert dropped == [("shutdown", 3)]
    stats = manager.stats()
    assert (stats["queued"], stats["in_flight"], stats["dropped"]) == (0, 0, {"shutdown": 3})
    assert manager.close() is False


def test_close_cuts_short_a_flush_waiting_out_a_backoff(make_client: ClientFactory, collector: OdpCollector) -> None:
    manager = SyncEventManager(retry_initial_backoff=5, retry_max_backoff=5)
    client = make_client(odp_event_manager=manager)
    client.send_odp_event("a", {"fs_user_id": "u"})
    collector.respond_with(503)  # and it stays down
    outcome: list[bool] = []
    flusher = threading.Thread(target=lambda: outcome.append(manager.flush(30)))
    flusher.start()
    assert collector.wait_for_requests(1)
    started = time.monotonic()
    manager.close(0.5)
    flusher.join(10)
    assert outcome == [False] and time.monotonic() - started < 3
    assert manager.stats()["dropped"] == {"shutdown": 1}, "close kept its own timeout"


def test_a_flush_tries_at_once_instead_of_waiting_out_a_long_backoff(make_client: ClientFactory,
                                                                     collector: OdpCollector) -> None:
    manager = SyncEventManager(retry_initial_backoff=60, retry_max_backoff=60)
    client = make_client(odp_event_manager=manager)
    client.send_odp_event("a", {"fs_user_id": "u"})
    collector.respond_with(503, times=1)
    assert manager.flush(0.2) is False  # failed once; the next try would be a minute away
    assert manager.flush(5), "ODP is back: the next flush does not wait out the minute"
    assert collector.event_count() == 1


def test_events_refused_with_a_bad_key_move_to_the_new_key(collector: OdpCollector) -> None:
    manager = SyncEventManager(retry_initial_backoff=60, retry_max_backoff=60)
    manager.start(logger=None, notification_center=None, integration=None)
    manager.logger = SyncEventManager().logger  # silent
    event = OdpEvent("fullstack", "a", {"fs_user_id": "u"}, integration=OdpIntegration(collector.url, "revoked"))
    assert manager.send(event)
    assert not manager.flush(1)
    assert [r.status for r in collector.requests] == [401]
    manager.integration_changed(OdpIntegration(collector.url, API_KEY))
    assert manager.flush(10)
    assert collector.requests[-1].headers["x-api-key"] == API_KEY and collector.event_count() == 1
    manager.close()


@pytest.mark.parametrize("mode", ["batch", "per_call"])
def test_concurrent_senders_and_flushers_deliver_every_event_once(mode: str, make_client: ClientFactory,
                                                                  collector: OdpCollector) -> None:
    client = make_client(odp_event_manager=SyncEventManager(mode=mode, batch_size=20))  # type: ignore[arg-type]

    def produce(thread: int) -> None:
        for i in range(60):
            assert client.send_odp_event("load", {"fs_user_id": f"{thread}-{i}"})
            if i % 25 == 0:
                client.flush(10)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(10)
    received = [e["identifiers"]["fs_user_id"] for e in collector.events]
    assert sorted(received) == sorted(f"{t}-{i}" for t in range(6) for i in range(60))
    assert collector.duplicates() == {}
    stats = client.odp_stats()
    assert (stats["delivered"], stats["queued"], stats["in_flight"]) == (360, 0, 0)


# -- settings -----------------------------------------------------------------------------------
def test_settings_resolve_like_the_batch_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_BATCH_SIZE", "7")
    monkeypatch.setenv("OPTIMIZELY_ODP_REQUEST_TIMEOUT", "3")
    manager = SyncEventManager(request_timeout=1.5)
    assert manager.settings.batch_size == 7 and manager.settings.sources["batch_size"] == "environment"
    assert manager.settings.request_timeout == 1.5 and manager.settings.sources["request_timeout"] == "argument"
    assert manager.settings.max_queue_events == 250_000 and manager.mode == "batch"
    assert set(manager.stats()) == set(BatchEventManager().stats()) - {"recovered"}
    manager.close()


@pytest.mark.parametrize(("arguments", "message"), [
    ({"mode": "sometimes"}, "argument mode must be one of 'batch', 'per_call'"),
    ({"batch_size": 501}, "argument batch_size must be a whole number from 1 to 500, not 501"),
    ({"max_queue_events": 0}, "argument max_queue_events must be a whole number of at least 1, not 0"),
])
def test_bad_settings_name_the_setting(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingError) as raised:
        SyncEventManager(**arguments)
    assert message in str(raised.value)


def test_spool_path_from_the_environment_is_ignored_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, make_client: ClientFactory, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_SPOOL_PATH", str(tmp_path / "odp.sqlite"))
    make_client(odp_event_manager=SyncEventManager())
    assert any("ignored from the environment: spool_path (OPTIMIZELY_ODP_SPOOL_PATH)" in line
               for line in log_lines(caplog))
    assert not (tmp_path / "odp.sqlite").exists()


def test_fleet_settings_meant_for_a_batch_manager_do_not_break_a_sync_one(
        monkeypatch: pytest.MonkeyPatch, make_client: ClientFactory, caplog: pytest.LogCaptureFixture,
        collector: OdpCollector) -> None:
    # An app whose background clients append to a fleet's stream (deliver=False, a relay
    # delivers) may also build a SyncEventManager, e.g. in its Lambda handler.
    monkeypatch.setenv("OPTIMIZELY_ODP_DELIVER", "false")
    monkeypatch.setenv("OPTIMIZELY_ODP_SPOOL_URL", "redis://127.0.0.1:1/0")
    manager = SyncEventManager()
    assert manager.settings.deliver and manager.settings.spool_url is None
    client = make_client(odp_event_manager=manager)
    assert client.send_odp_event(action="a", identifiers={"fs_user_id": "u"})
    assert manager.flush(10) and collector.event_count() == 1
    warning = [line for line in log_lines(caplog) if "ignored from the environment" in line]
    assert len(warning) == 1 and "spool_url (OPTIMIZELY_ODP_SPOOL_URL)" in warning[0]
    assert "deliver (OPTIMIZELY_ODP_DELIVER)" in warning[0]


# -- processes ----------------------------------------------------------------------------------
def run(body: str, collector: OdpCollector) -> str:
    prelude = textwrap.dedent(f"""
        import json, os, sys
        from optimizely_odp_ext import OdpOptimizely, SyncEventManager
        from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile
        DATAFILE = json.dumps(sample_datafile({collector.url!r}, {API_KEY!r}))
        def client(**settings):
            return OdpOptimizely(datafile=DATAFILE, event_dispatcher=RecordingEventDispatcher(),
                                 odp_event_manager=SyncEventManager(**settings))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], env=env, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_exit_without_flush_delivers_the_buffer(collector: OdpCollector) -> None:
    run("""
        c = client()
        for i in range(30):
            assert c.send_odp_event("at-exit", {"fs_user_id": str(i)})
        # neither flush nor close: the interpreter exits
    """, collector)
    assert collector.event_count() == 30


def test_forked_child_starts_empty_and_parent_events_are_not_sent_twice(collector: OdpCollector) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    run("""
        c = client()
        c.send_odp_event("parent-before-fork", {"fs_user_id": "p"})
        pid = os.fork()
        if pid == 0:
            ok = c.send_odp_event("child", {"fs_user_id": "c"}) and c.odp_stats()["queued"] == 1
            os._exit(0 if ok and c.flush(20) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c.flush(20)
    """, collector)
    assert sorted(actions(collector)) == ["child", "parent-before-fork"]
    assert collector.duplicates() == {}


def test_results_are_json_friendly(make_client: ClientFactory) -> None:
    client = make_client(odp_event_manager=SyncEventManager())
    client.send_odp_event("a", {"fs_user_id": "u"})
    json.dumps(client.odp_stats())
