"""``SyncEventManager``: ODP delivery on the caller's thread, for serverless functions and scripts.

It never starts a thread. Two modes:

- ``"batch"`` (default): ``send`` only buffers the event (at most ``max_queue_events``; beyond
  that new events are refused with ``queueFull``). Nothing leaves until ``flush(timeout)`` or
  ``close(timeout)``, which send batches of up to ``batch_size`` events on the calling thread.
- ``"per_call"``: ``send`` also makes one POST before it returns (blocking for about
  ``request_timeout`` at most): the event's batch, or an older batch of the same destination
  that is waiting for a retry (the event then waits for the next ``send`` or ``flush``).

What a delivery failure means (both modes): ``send`` never raises and returns
:data:`~optimizely_odp_ext.result.ACCEPTED` for every event it buffered, whatever then
happens to the POST; the outcome is reported through ``stats()``, the log and the ODP
notifications (in ``per_call`` mode they fire on the caller's thread before ``send``
returns). Network errors, timeouts, 408, 429, 5xx, 401 and 403 keep the events for a retry
(with backoff) on the next ``send`` (``per_call``) or ``flush``; a batch refused with
400/413/422 is split until the refused events are alone, and only those are dropped
(``rejectedByServer``). ``flush(timeout)`` retries within its timeout and returns False,
keeping what is still undelivered for the next flush, when the time runs out. ``close``
drops what is left (``shutdown``). Events live in memory only: ``spool_path`` is ignored.

Thread-safe: one lock guards the buffer and the counters; it is never held while sending
or while notification listeners run. After ``os.fork()`` the child starts with an empty
buffer and a new HTTP session (the parent keeps and delivers what it accepted); at
interpreter exit, a manager that was not closed is closed within ``exit_timeout``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from optimizely_odp_ext import notifications
from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers import lifecycle
from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.managers.batching import Batch, Item
from optimizely_odp_ext.managers.ledger import DeliveryLedger, Fate
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.settings import ManagerSettings, SettingError
from optimizely_odp_ext.transport import Outcome, Transport

Mode = Literal["batch", "per_call"]
MODES: tuple[str, ...] = ("batch", "per_call")


class SyncEventManager(EventManager):
    """Delivers ODP events on the calling thread, without any background thread.

    Args:
        mode: ``"batch"`` (buffer until ``flush``/``close``) or ``"per_call"`` (one POST in each
            ``send``). See the module docstring for what happens on failures.
        batch_size, max_batch_bytes, max_queue_events, request_timeout, retry_initial_backoff,
        retry_max_backoff, close_timeout, exit_timeout: as for ``BatchEventManager``; each
        falls back to its ``OPTIMIZELY_ODP_*`` environment variable, then to its default.

    Raises:
        SettingError: A setting (or ``mode``) has a value it cannot take.
    """

    def __init__(self, mode: Mode = "batch", *, batch_size: int | None = None,
                 max_batch_bytes: int | None = None, max_queue_events: int | None = None,
                 request_timeout: float | None = None, retry_initial_backoff: float | None = None,
                 retry_max_backoff: float | None = None, close_timeout: float | None = None,
                 exit_timeout: float | None = None) -> None:
        if mode not in MODES:
            raise SettingError(f"argument mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        self.mode: Mode = mode
        self.settings = ManagerSettings.resolve({
            "batch_size": batch_size, "max_batch_bytes": max_batch_bytes, "max_queue_events": max_queue_events,
            "request_timeout": request_timeout, "retry_initial_backoff": retry_initial_backoff,
            "retry_max_backoff": retry_max_backoff, "close_timeout": close_timeout, "exit_timeout": exit_timeout,
        })
        self.logger: Any = lifecycle.NullLogger()
        self.notification_center: Any = None
        self._closed = False
        self._finished = False
        """close() has given up on what was left: late outcomes of other threads are dropped."""
        self._close_result = False
        self._reset()
        lifecycle.track(self)

    def _reset(self) -> None:
        """The state a forked child starts afresh (the parent delivers what it accepted)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        """Notified when a request ends and when close() starts."""
        self._ledger = DeliveryLedger(self.settings)
        """Destinations, batches in flight, counters and notifications (under the lock)."""
        self._held = 0
        """Accepted events not yet delivered or dropped (buffered or in flight)."""
        self._next_seq = 0
        self._flushing = 0
        """Flushes (and a close) under way: retries within them are not left to wait long."""
        self._transport = Transport(self.settings.request_timeout, pool_size=10)

    def start(self, *, logger: Any, notification_center: Any, integration: OdpIntegration | None) -> None:
        """Take the SDK's logger and notification center. Non-blocking."""
        super().start(logger=logger, notification_center=notification_center, integration=integration)
        if self.settings.spool_path:
            self.logger.warning("ODP: SyncEventManager keeps events in memory only; spool_path is ignored.")

    def send(self, event: OdpEvent) -> SendResult:
        """Accept one event. Never raises; thread-safe.

        Returns ACCEPTED when the event was buffered for delivery (whatever the outcome of a
        POST made here), else a discarded result (``queueFull``, ``closed``). In ``batch`` mode
        it does not block; in ``per_call`` mode it blocks for one request (about
        ``request_timeout`` at most), or not at all while the destination backs off.
        """
        if self._closed:
            return self._refuse(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")
        integration = event.integration
        if integration is None:  # the client binds every event before handing it over
            return self._refuse(DiscardReason.ODP_NOT_INTEGRATED, "ODP event has no integration; discarded.")
        try:
            body = event.to_json()
        except (TypeError, ValueError) as error:  # validated before: only a bug gets here
            return self._refuse(DiscardReason.INTERNAL_ERROR, f"ODP event could not be encoded: {error}")
        batch: Batch | None = None
        with self._lock:  # close() sets _closed under this lock: an event buffered here is its to deliver
            closed, full = self._closed, self._held >= self.settings.max_queue_events
            if not (closed or full):
                self._held += 1
                dest = self._ledger.destination(integration)
                dest.add(Item(self._next_seq, body, event.accepted_at))
                self._next_seq += 1
                if self.mode == "per_call":
                    batch = self._ledger.take_batch(dest, time.monotonic(), 0.0, flushing=True)
        if closed:
            return self._refuse(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")
        if full:
            return self._refuse(DiscardReason.QUEUE_FULL, f"ODP event buffer is full "
                                f"({self.settings.max_queue_events} events); event discarded.")
        if batch is not None:
            self._post(batch)
        return ACCEPTED

    def flush(self, timeout: float | None = None) -> bool:
        """Send every event accepted so far, on this thread, retrying within ``timeout`` seconds
        (None: no limit). True when all of it was delivered or finally resolved; False when time
        ran out (or a retry was due after it): what is undelivered stays for the next flush.
        Once ``close`` has started, returns its verdict (False while it runs). Blocks;
        thread-safe (concurrent flushes share the work)."""
        return self._flush(None if timeout is None else time.monotonic() + max(0.0, timeout), final=False)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new events, flush within ``timeout`` (default: ``close_timeout``), then drop what
        is left (counted as ``shutdown`` and logged). True when nothing was left undelivered.
        Idempotent (a second call returns the first one's result). Blocks; thread-safe."""
        with self._lock:
            if self._closed:
                return self._close_result
            self._closed = True
            self._changed.notify_all()  # a flush waiting out a backoff elsewhere returns now
        limit = self.settings.close_timeout if timeout is None else timeout
        delivered = self._flush(time.monotonic() + max(0.0, limit), final=True)
        with self._lock:
            left = self._ledger.take_all()
            in_flight = self._ledger.in_flight_events
            self._ledger.drop(left, DiscardReason.SHUTDOWN)
            self._held -= len(left)
            self._close_result = delivered and not left and not in_flight
            self._finished = True
            notes = self._ledger.take_notes()
        notifications.fire(self.notification_center, notes)
        if left or in_flight:
            self.logger.error(f"ODP event manager closed with {len(left) + in_flight} events undelivered "
                              f"(timeout {limit}s).")
        self._transport.close()
        lifecycle.untrack(self)
        return self._close_result

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters. Non-blocking; thread-safe."""
        with self._lock:
            return self._ledger.stats(accepted=self._next_seq, queued=self._held - self._ledger.in_flight_events)

    def integration_changed(self, integration: OdpIntegration | None) -> None:
        """Events held back by a refused key (401/403) move to the new key. Non-blocking."""
        if integration is None:
            return
        with self._lock:
            self._ledger.move_refused(integration, self.logger)

    # -- internals ---------------------------------------------------------------------------
    def _flush(self, deadline: float | None, final: bool) -> bool:
        with self._lock:
            target = self._next_seq
            self._flushing += 1
            self._ledger.hurry(time.monotonic())
        try:
            return self._flush_until(target, deadline, final)
        finally:
            with self._lock:
                self._flushing -= 1

    def _flush_until(self, target: int, deadline: float | None, final: bool) -> bool:
        while True:
            with self._lock:
                if self._closed and not final:  # close() decides what becomes of the rest
                    return self._finished and self._close_result
                oldest = self._ledger.oldest_unresolved()
                if oldest is None or oldest >= target:
                    return True
                now = time.monotonic()
                batch, due = None, None
                for dest in list(self._ledger.destinations.values()):
                    batch = self._ledger.take_batch(dest, now, 0.0, flushing=True)
                    if batch is not None:
                        break
                    if dest.has_work() and dest.in_flight == 0:
                        due = dest.not_before if due is None else min(due, dest.not_before)
                if batch is None:
                    if deadline is not None and (now >= deadline or (due is not None and due >= deadline)):
                        return False
                    waits = [t - now for t in (deadline, due) if t is not None]
                    self._changed.wait(min(waits) if waits else None)
                    continue
            self._post(batch)

    def _post(self, batch: Batch) -> None:
        """One POST, without the lock; then record its outcome and notify listeners."""
        batch.attempts += 1
        outcome = self._transport.send(batch.destination, batch.body())
        with self._lock:
            self._complete(batch, outcome)
            notes = self._ledger.take_notes()
        notifications.fire(self.notification_center, notes)

    def _complete(self, batch: Batch, outcome: Outcome) -> None:
        """Apply the retry rules of :mod:`optimizely_odp_ext.retry` to one outcome; once close()
        gave up, what would be kept is dropped (``shutdown``). Lock held."""
        done = self._ledger.complete(batch, outcome, self.logger, keep=not self._finished,
                                     hurry=self._flushing > 0)
        if done.resolved:
            self._held -= len(batch.items)
        elif done.fate is Fate.RETRY:
            self.logger.warning(f"ODP request failed ({outcome.detail}); {len(batch.items)} events kept for a "
                                f"retry in {done.delay:.2f}s or later.")
        dest = done.dest
        if not dest.has_work() and dest.in_flight == 0 and dest.failures == 0:
            del self._ledger.destinations[dest.integration]
        self._changed.notify_all()

    def _refuse(self, reason: DiscardReason, message: str) -> SendResult:
        with self._lock:
            self._ledger.dropped[reason.value] += 1
        self.logger.warning(message)
        return SendResult.discarded(reason, message)

    def at_exit(self) -> None:
        self.close(self.settings.exit_timeout)

    def after_fork_in_child(self) -> None:
        self._reset()
