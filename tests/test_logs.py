"""Repeated log lines are rate-limited; every refusal is still counted and returned in full."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from conftest import ClientFactory, log_lines

from optimizely_odp_ext import DiscardReason, EventManager, OdpEvent, SendResult
from optimizely_odp_ext.logs import LogRateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_line_at_once_then_one_summary_per_interval() -> None:
    clock, lines = FakeClock(), []
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    assert limiter.log(lines.append, "events refused (queueFull)", "first")
    for _ in range(12_345):
        assert not limiter.log(lines.append, "events refused (queueFull)", "again")
    assert lines == ["first"]
    clock.now += 10.0
    assert limiter.log(lines.append, "events refused (queueFull)", "after the interval")
    assert lines == ["first", "... and 12,345 more events refused (queueFull) in the last 10 s.",
                     "after the interval"]


def test_keys_are_limited_separately() -> None:
    lines: list[str] = []
    limiter = LogRateLimiter(interval=10.0, clock=FakeClock())
    limiter.log(lines.append, "a", "a1")
    limiter.log(lines.append, "b", "b1")
    limiter.log(lines.append, "a", "a2")
    assert lines == ["a1", "b1"]


def test_flush_writes_pending_summaries_with_their_own_log_method() -> None:
    clock = FakeClock()
    warnings: list[str] = []
    errors: list[str] = []
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    limiter.log(warnings.append, "w", "w1")
    limiter.log(warnings.append, "w", "w2")
    limiter.log(errors.append, "e", "e1")
    clock.now += 3
    limiter.flush()
    assert warnings == ["w1", "... and 1 more w in the last 3 s."]
    assert errors == ["e1"], "no summary for a key that held nothing back"
    limiter.flush()
    assert len(warnings) == 2, "a summary is written once"
    assert limiter.log(warnings.append, "w", "w3"), "after a flush the next line is written at once"


def test_a_quiet_key_writes_no_summary_by_itself() -> None:
    clock, lines = FakeClock(), []
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    limiter.log(lines.append, "k", "one")
    clock.now += 3600
    assert lines == ["one"]


def test_many_threads_every_line_is_written_or_counted() -> None:
    lines: list[str] = []
    lock = threading.Lock()

    def write(message: str) -> None:
        with lock:
            lines.append(message)

    limiter = LogRateLimiter(interval=3600.0)
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait()
        for _ in range(per_thread):
            limiter.log(write, "k", "line")

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    limiter.flush()
    written = [line for line in lines if line == "line"]
    summaries = [line for line in lines if line.startswith("... and ")]
    assert len(written) == 1 and len(summaries) == 1
    counted = int(summaries[0].split()[2].replace(",", ""))
    assert len(written) + counted == threads * per_thread


def test_log_never_waits_for_a_thread_renewing_a_window() -> None:
    clock, lines = FakeClock(), []
    limiter = LogRateLimiter(interval=10.0, clock=clock)
    limiter.log(lines.append, "k", "first")
    clock.now += 20
    with limiter._renewing:  # another thread is renewing right now
        done = threading.Event()
        worker = threading.Thread(target=lambda: (limiter.log(lines.append, "k", "raced"), done.set()))
        worker.start()
        assert done.wait(5), "log() returned without waiting for the lock"
    worker.join(5)
    assert lines == ["first"], "the raced line is counted for the summary"
    limiter.flush()
    assert lines[-1] == "... and 1 more k in the last 20 s."


class RefusingManager(EventManager):
    """Refuses every event as a full queue would, without logging (the client logs)."""

    def send(self, event: OdpEvent) -> SendResult:
        return SendResult.discarded(DiscardReason.QUEUE_FULL, "ODP event queue is full; event discarded.")


def test_a_flood_of_refusals_logs_two_lines_counts_all_and_returns_every_message(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(odp_event_manager=RefusingManager())
    caplog.clear()
    results = [client.send_odp_event("a", {"fs_user_id": str(i)}) for i in range(5_000)]
    expected = "ODP event send failed (Queue is full). ODP event queue is full; event discarded."
    assert all(not r and r.reason is DiscardReason.QUEUE_FULL and r.message == expected for r in results)
    assert log_lines(caplog) == [expected], "the first refusal is logged at once, the rest held back"
    assert client.odp_stats()["refused"] == {"queueFull": 5_000}
    client.flush(1)
    lines = log_lines(caplog)
    assert len(lines) == 2 and lines[1].startswith("... and 4,999 more ODP events refused (queueFull) in the last")
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.getMessage() in lines)


def test_refusals_of_different_reasons_each_get_their_first_line(make_client: ClientFactory,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    caplog.clear()
    calls: list[dict[str, Any]] = [{"action": ""}, {"identifiers": {}}, {"data": {"x": [1]}}] * 3
    for override in calls:
        call: dict[str, Any] = {"action": "a", "identifiers": {"k": "v"}, "data": None, **override}
        assert not client.send_odp_event(call["action"], call["identifiers"], data=call["data"])
    assert [line.split(" (")[0].split(".")[0] for line in log_lines(caplog)] == [
        "ODP action is not valid", "ODP events must have at least one key-value pair in identifiers",
        "ODP data is not valid"]
    assert client.odp_stats()["refused"] == {"invalidAction": 3, "invalidIdentifiers": 3, "invalidData": 3}
