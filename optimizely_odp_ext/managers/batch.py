"""The default event manager: batches in the background, several requests in flight.

The caller's thread only appends the (already validated) event to a deque. A
dispatcher thread encodes events, cuts batches (by count, bytes and time) per
destination, and hands them to ``max_in_flight`` sender threads that share one
keep-alive ``requests.Session``. Outcomes come back to the dispatcher's structures
under one lock; nothing is dropped except by the documented policies (queue full,
refused by the server, older than ``max_event_age``, left at shutdown), each counted
and logged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

from optimizely_odp_ext import notifications
from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.managers import lifecycle
from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.managers.batching import Batch, Item
from optimizely_odp_ext.managers.ledger import DeliveryLedger, Fate
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.settings import ManagerSettings
from optimizely_odp_ext.spool import SpoolError, SpoolId, SqliteSpool
from optimizely_odp_ext.transport import Outcome, Transport

ENCODE_CHUNK = 500
"""Events encoded per hold of the lock: outcomes never wait long for it, and full batches
leave between chunks."""
_EXPIRY_CHECK_INTERVAL = 1.0


class BatchEventManager(EventManager):
    """Delivers ODP events in batches from background threads.

    Every setting can be given as an argument, or as an ``OPTIMIZELY_ODP_*``
    environment variable (see :mod:`optimizely_odp_ext.settings`). ``send`` never
    blocks; ``flush`` and ``close`` block up to their timeout. All methods are
    thread-safe. Threads start on the first event, and again in a forked child.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = ManagerSettings.resolve(settings)
        self.logger: Any = lifecycle.NullLogger()
        self.notification_center: Any = None
        self._closed = False
        self._spool: SqliteSpool | None = None
        self._spool_error = ""
        self._spool_lost_in_fork = False
        if self.settings.spool_path:
            try:
                self._spool = SqliteSpool(self.settings.spool_path)
            except SpoolError as error:
                self._spool_error = f"ODP spool disabled, events are kept in memory only: {error}"
        self._init_runtime_state()
        lifecycle.track(self)

    # -- state that a forked child rebuilds -------------------------------------------------
    def _init_runtime_state(self) -> None:
        s = self.settings
        self._incoming: deque[tuple[OdpEvent, int]] = deque()
        """(event, spool row id) pairs appended by callers; drained by the dispatcher."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        """Notified whenever events are resolved (delivered or dropped)."""
        self._wake = threading.Event()
        self._idle = False
        self._started = False
        self._stopping = False
        self._flush_requests = 0
        self._ledger = DeliveryLedger(s)
        """Destinations, batches in flight, counters and notifications (under the lock)."""
        self._work: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._transport = Transport(s.request_timeout, s.max_in_flight)
        self._next_seq = 0
        self._buffered_events = 0
        self._buffered_bytes = 0
        self._event_bytes_estimate = 300
        """Average encoded size so far: what an event not yet encoded counts against max_queue_bytes."""
        self._last_expiry_check = 0.0
        self._current_integration: OdpIntegration | None = None

    # -- the caller's side -------------------------------------------------------------------
    def start(self, *, logger: Any, notification_center: Any, integration: OdpIntegration | None) -> None:
        """Take the SDK's logger and notification center; deliver what a previous run left
        in the spool. Non-blocking apart from reading the spool."""
        self.logger = logger
        self.notification_center = notification_center
        if self._spool_error:
            self.logger.error(self._spool_error)
        self._recover_spooled_events()

    def _recover_spooled_events(self) -> None:
        if self._spool is None:
            return
        try:
            spooled = list(self._spool.iter_all())
        except SpoolError as error:
            self.logger.error(f"ODP spool could not be read, its events stay in it: {error}")
            return
        if not spooled:
            return
        now_wall, now = time.time(), time.monotonic()
        with self._lock:
            for row in spooled:
                item = Item(self._next_seq, row.body, now - max(0.0, now_wall - row.accepted_at), row.id)
                self._next_seq += 1
                self._ledger.destination(OdpIntegration(row.host, row.api_key)).add(item)
                self._buffered_events += 1
                self._buffered_bytes += len(row.body)
        self.logger.info(f"ODP: {len(spooled)} events from the spool of a previous run will be delivered.")
        self._start_threads()
        self._wake.set()

    def send(self, event: OdpEvent) -> SendResult:
        """Queue one event. Non-blocking, thread-safe, never raises."""
        if self._closed:
            return self._refuse(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")
        incoming = self._incoming
        s = self.settings
        waiting = len(incoming)
        if (waiting + self._buffered_events >= s.max_queue_events
                or self._buffered_bytes + waiting * self._event_bytes_estimate >= s.max_queue_bytes):
            return self._refuse(
                DiscardReason.QUEUE_FULL,
                f"ODP event queue is full ({s.max_queue_events} events / {s.max_queue_bytes} bytes); "
                "event discarded.",
            )
        if not self._started:
            self._start_threads()
        spool_id = self._store(event) if self._spool is not None else 0
        incoming.append((event, spool_id))
        if self._idle or len(incoming) >= s.batch_size:
            self._idle = False
            self._wake.set()
        return ACCEPTED

    def _store(self, event: OdpEvent) -> int:
        """Write the event to the spool before ``send`` returns; 0 if that failed (it is
        then kept in memory only, and the failure logged)."""
        assert self._spool is not None and event.integration is not None
        try:
            return self._spool.append(event.integration.host, event.integration.api_key, event.to_json(),
                                      time.time())
        except (SpoolError, ValueError, TypeError) as error:
            self.logger.error(f"ODP event could not be written to the spool, kept in memory only: {error}")
            return 0

    def _refuse(self, reason: DiscardReason, message: str) -> SendResult:
        with self._lock:
            self._ledger.dropped[reason.value] += 1
        self.logger.warning(message)
        return SendResult.discarded(reason, message)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything accepted so far now, and wait until it was delivered or finally
        resolved. Returns False if ``timeout`` (seconds) ran out first. Blocks; thread-safe."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._next_seq + len(self._incoming)
            if not self._started and not self._incoming:
                return True
            self._flush_requests += 1
            self._ledger.hurry(time.monotonic())
        try:
            self._wake.set()
            with self._lock:
                while True:
                    oldest = self._oldest_unresolved()
                    if oldest is None or oldest >= target:
                        return True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._changed.wait(remaining)
        finally:
            with self._lock:
                self._flush_requests -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting events, deliver what was accepted within ``timeout`` (default: the
        ``close_timeout`` setting), then stop the threads. What is left is counted as
        dropped (reason ``shutdown``) and logged. Idempotent. Blocks; thread-safe."""
        if self._closed:
            return self._undelivered() == 0
        self._closed = True
        limit = self.settings.close_timeout if timeout is None else timeout
        delivered_all = self.flush(limit)
        with self._lock:
            self._stopping = True
            while self._incoming:  # accepted by a send that raced with close
                self._accept_chunk()
            left = self._ledger.take_all()
            left_in_flight = self._ledger.in_flight_events
            spooled = sum(1 for item in left if item.spool_id)
            self._resolve_dropped([item for item in left if not item.spool_id], DiscardReason.SHUTDOWN)
            notes = self._take_notes()
        self._fire(notes)
        self._wake.set()
        for _ in self._threads:
            self._work.put(None)
        if left or left_in_flight:
            where = f"; {spooled} of them stay in the spool for the next start" if spooled else ""
            self.logger.error(
                f"ODP event manager closed with {len(left) + left_in_flight} events undelivered "
                f"(timeout {limit}s){where}."
            )
        self._transport.close()
        if self._spool is not None:
            self._spool.close()
        lifecycle.untrack(self)
        return delivered_all and not left and not left_in_flight

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters. Thread-safe."""
        with self._lock:
            return self._ledger.stats(
                accepted=self._next_seq + len(self._incoming),
                queued=self._buffered_events - self._ledger.in_flight_events + len(self._incoming),
                queued_bytes=self._buffered_bytes,
            )

    def integration_changed(self, integration: OdpIntegration | None) -> None:
        """Events held back by a refused key move to the new integration."""
        with self._lock:
            self._current_integration = integration
            if integration is None:
                return
            self._ledger.move_refused(integration, self.logger)
        self._wake.set()

    # -- threads -----------------------------------------------------------------------------
    def _start_threads(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            if self._spool_lost_in_fork:
                self.logger.warning("ODP spool belongs to the parent process; this forked process keeps "
                                    "its events in memory only.")
            self._threads = [threading.Thread(target=self._run_dispatcher, name="odp-dispatcher", daemon=True)]
            self._threads += [
                threading.Thread(target=self._run_sender, name=f"odp-sender-{i}", daemon=True)
                for i in range(self.settings.max_in_flight)
            ]
        for thread in self._threads:
            thread.start()

    def _run_dispatcher(self) -> None:
        while not self._stopping:
            try:
                wait = self._dispatch_once()
            except Exception as error:  # a bug must not stop delivery for good
                self.logger.error(f"ODP dispatcher error: {type(error).__name__}: {error}")
                wait = 0.1
            if wait is None:
                self._idle = True
                if self._incoming:
                    self._idle = False
                    continue
            self._wake.wait(wait)
            self._wake.clear()

    def _dispatch_once(self) -> float | None:
        """Encode new events and send due batches, a chunk at a time so that the first full
        batches leave while the rest of a burst is still being encoded; return seconds
        until there is more to do (None: wait to be woken)."""
        while True:
            with self._lock:
                self._accept_chunk()
            wait = self._send_due_batches()
            if not self._incoming:
                return wait

    def _send_due_batches(self) -> float | None:
        s, ledger = self.settings, self._ledger
        now = time.monotonic()
        with self._lock:
            if now - self._last_expiry_check >= _EXPIRY_CHECK_INTERVAL:
                self._expire(now)
            notes = self._take_notes()
        self._fire(notes)
        with self._lock:
            flushing = self._flush_requests > 0 or self._closed
            next_due: float | None = None
            for dest in list(ledger.destinations.values()):
                while len(ledger.in_flight) < s.max_in_flight:
                    batch = ledger.take_batch(dest, now, s.flush_interval, flushing)
                    if batch is None:
                        break
                    self._work.put(batch)
                due = dest.due_at(0.0 if flushing else s.flush_interval)
                if due is not None and (dest.failures == 0 or dest.in_flight == 0):
                    next_due = due if next_due is None else min(next_due, due)
                if not dest.has_work() and dest.in_flight == 0:
                    del ledger.destinations[dest.integration]
            if next_due is None:
                return None
            if len(ledger.in_flight) >= s.max_in_flight:
                return None  # a sender finishing wakes us
            return max(0.0, next_due - time.monotonic())

    def _accept_chunk(self) -> None:
        """Move up to ENCODE_CHUNK events from the caller's deque into their destinations."""
        incoming, destination, dropped = self._incoming, self._ledger.destination, self._ledger.dropped
        for _ in range(min(ENCODE_CHUNK, len(incoming))):
            event, spool_id = incoming.popleft()
            seq = self._next_seq
            self._next_seq = seq + 1
            integration = event.integration
            try:
                body = event.to_json()
            except (TypeError, ValueError) as error:  # validated before: only a bug gets here
                dropped[DiscardReason.INTERNAL_ERROR.value] += 1
                self.logger.error(f"ODP event could not be encoded and was dropped: {error}")
                continue
            if integration is None:
                dropped[DiscardReason.ODP_NOT_INTEGRATED.value] += 1
                continue
            destination(integration).add(Item(seq, body, event.accepted_at, spool_id))
            self._buffered_events += 1
            self._buffered_bytes += len(body)
            self._event_bytes_estimate += (len(body) - self._event_bytes_estimate) // 64

    def _run_sender(self) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            batch.attempts += 1
            outcome = self._transport.send(batch.destination, batch.body())
            with self._lock:
                self._complete(batch, outcome)
                notes = self._take_notes()
            self._wake.set()
            self._fire(notes)

    # -- outcomes (called with the lock held) -------------------------------------------------
    def _complete(self, batch: Batch, outcome: Outcome) -> None:
        """The retry rules (the ledger's), then this manager's part: spool rows and capacity of
        resolved events, a 401 batch re-keyed to the key now in force, the retry warning."""
        current = self._current_integration
        done = self._ledger.complete(batch, outcome, self.logger, new_key=current,
                                     hurry=self._flush_requests > 0 or self._closed)
        if done.resolved:
            self._release(batch.items)
            self._changed.notify_all()
        elif done.fate is Fate.MOVE and current is not None:
            self._ledger.move(current, batch.items, self.logger)  # a new key arrived while this batch was out
        elif done.fate is Fate.RETRY:
            message = (f"ODP request failed ({outcome.detail}); {len(batch.items)} events kept, "
                       f"retry #{done.dest.failures} in {done.delay:.2f}s.")
            if done.dest.unauthorized:
                message += f" The key {mask_key(batch.destination.api_key)} is refused: waiting for a new one."
            self.logger.warning(message)

    def _release(self, items: list[Item]) -> None:
        """Items are resolved for good (delivered or dropped): forget them, here and in the
        spool. The spool rows go before flush() can see the items resolved."""
        if self._spool is not None:
            self._delete_from_spool([item.spool_id for item in items if item.spool_id])
        self._buffered_events -= len(items)
        self._buffered_bytes -= sum(len(item.body) for item in items)

    def _resolve_dropped(self, items: list[Item], reason: DiscardReason) -> None:
        if not items:
            return
        self._ledger.drop(items, reason)
        self._release(items)
        self._changed.notify_all()

    def _expire(self, now: float) -> None:
        self._last_expiry_check = now
        cutoff = now - self.settings.max_event_age
        for dest in self._ledger.destinations.values():
            expired = dest.take_older_than(cutoff)
            if expired:
                self.logger.error(
                    f"ODP gave up {len(expired)} events older than {self.settings.max_event_age}s "
                    f"(destination {dest.integration.host})."
                )
                self._resolve_dropped(expired, DiscardReason.EXPIRED)

    def _oldest_unresolved(self) -> int | None:
        oldest = self._ledger.oldest_unresolved()
        if self._incoming and (oldest is None or self._next_seq < oldest):
            return self._next_seq
        return oldest

    def _undelivered(self) -> int:
        with self._lock:
            return self._buffered_events + len(self._incoming)

    def _delete_from_spool(self, rowids: list[SpoolId]) -> None:
        assert self._spool is not None
        if not rowids:
            return
        try:
            self._spool.delete(rowids)
        except SpoolError as error:
            self.logger.error(f"ODP spool rows could not be deleted (they may be sent again): {error}")

    def _take_notes(self) -> list[notifications.Note]:
        """The notifications collected under the lock, to fire once it is released."""
        return self._ledger.take_notes()

    def _fire(self, notes: list[notifications.Note]) -> None:
        notifications.fire(self.notification_center, notes)

    # -- fork and exit -------------------------------------------------------------------------
    def after_fork_in_child(self) -> None:
        """The parent keeps delivering what it queued; the child starts afresh, in memory:
        a spool file belongs to the process that opened it."""
        if self._spool is not None:
            self._spool = None
            self._spool_lost_in_fork = True
        self._init_runtime_state()

    def at_exit(self) -> None:
        if not self._closed:
            self.close(self.settings.exit_timeout)
