"""Senders take the manager's lock without queueing on it (managers/convoy.py), and the
capacity stays exact when many of them race for it."""

from __future__ import annotations

import threading
import time

from conftest import ClientFactory

from optimizely_odp_ext import BatchEventManager, DiscardReason
from optimizely_odp_ext.managers.convoy import PoliteLock, acquire_contended
from optimizely_odp_ext.testing import OdpCollector


def test_a_sender_finding_the_lock_taken_gets_it_once_the_holder_lets_go() -> None:
    lock = threading.Lock()
    lock.acquire()
    trying, acquired, done = threading.Event(), threading.Event(), threading.Event()

    def sender() -> None:
        trying.set()
        acquire_contended(lock)
        acquired.set()
        done.wait(10)
        lock.release()

    thread = threading.Thread(target=sender)
    thread.start()
    assert trying.wait(10)
    assert not acquired.wait(0.05), "the lock is still held: the sender must not have it"
    lock.release()
    assert acquired.wait(10), "the sender takes the lock once it is free (after its polite tries, by waiting)"
    assert not lock.acquire(False), "the sender holds it"
    done.set()
    thread.join(10)
    assert lock.acquire(False), "and gives it back"


def test_eight_senders_racing_for_the_last_room_take_exactly_the_capacity(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    collector.respond_with(503)  # nothing leaves: the room only fills
    capacity, per_thread, senders = 1000, 400, 8
    client = make_client(odp_event_manager=BatchEventManager(max_queue_events=capacity, flush_interval=3600))
    start = threading.Barrier(senders)
    results: list[list[bool]] = [[] for _ in range(senders)]
    reasons: set[object] = set()

    def send(thread: int) -> None:
        start.wait(10)
        for i in range(per_thread):
            result = client.send_odp_event("race", {"fs_user_id": f"{thread}-{i}"})
            results[thread].append(bool(result))
            if not result:
                reasons.add(result.reason)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    accepted = sum(sum(mine) for mine in results)
    assert accepted == capacity
    assert reasons == {DiscardReason.QUEUE_FULL}
    stats = client.odp_stats()
    assert stats["accepted"] == capacity
    assert stats["queued"] + stats["in_flight"] == capacity, "every accepted event is held, none twice"
    assert stats["refused"] == {"queueFull": senders * per_thread - capacity}
    collector.reset_faults()
    assert client.flush(30)
    assert collector.event_count() == capacity and collector.duplicates() == {}


def test_the_managers_lock_works_under_a_condition_and_keeps_a_lock_s_answers() -> None:
    lock = PoliteLock()
    condition = threading.Condition(lock)  # type: ignore[arg-type]
    woken = threading.Event()
    held_after_waking: list[bool] = []

    def worker() -> None:
        with condition:
            assert condition.wait(10), "notified in time"
            held_after_waking.append(lock.locked())
        woken.set()

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 10
    while not condition._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]  # it waits
        woken.wait(0.001)
    with condition:
        condition.notify()
    assert woken.wait(10) and held_after_waking == [True], "it holds the lock again when it wakes"
    thread.join(10)
    assert not lock.locked()
    assert lock.acquire(False)
    assert not lock.acquire(False), "taken: a non-blocking acquire says so"
    assert not lock.acquire(True, 0.01), "taken: an acquire with a timeout gives up"
    lock.release()
    assert lock.acquire(True, 0.01)
    lock.release()
