"""``SyncEventManager``: ODP delivery on the caller's thread, for serverless functions and scripts.

It never starts a thread. Two modes:

- ``"batch"`` (default): ``send`` only buffers the event, encoded (at most ``max_queue_events``
  and ``max_queue_bytes``; beyond that new events are refused with ``queueFull``). Nothing
  leaves until ``flush(timeout)`` or ``close(timeout)``, which send batches of up to
  ``batch_size`` events on the calling thread.
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
keeping what is still undelivered for the next flush, when the time runs out; no request it
makes waits longer than the time left (a server that never answers costs ``timeout``, not
``request_timeout``). ``close``
drops what is left (``shutdown``). Events live in memory only: the spool settings (and
``deliver``, ``flush_interval``, ``max_in_flight``, ``max_event_age``) do not apply; set in the
environment, they are ignored with a warning.

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
from optimizely_odp_ext.logs import LogRateLimiter
from optimizely_odp_ext.managers import lifecycle
from optimizely_odp_ext.managers.base import DEFAULT_FLUSH_TIMEOUT, EventManager, wait_limit
from optimizely_odp_ext.managers.batching import WAITING_OVERHEAD, Batch, Destination, seal, waiting_memory
from optimizely_odp_ext.managers.ledger import DeliveryLedger, Fate
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.settings import SETTINGS_BY_NAME, ManagerSettings, SettingError, seconds
from optimizely_odp_ext.transport import OutcomeKind, Transport

Mode = Literal["batch", "per_call"]
MODES: tuple[str, ...] = ("batch", "per_call")
MIN_REQUEST_TIMEOUT = 0.05
"""A request is not started with less time left than this."""
UNUSED_SETTINGS = ("flush_interval", "max_in_flight", "max_event_age", "spool_path", "spool_url",
                   "spool_stream", "spool_group", "claim_after", "deliver")
"""Settings of the background manager this one has no use for: their environment variables
(meant for a ``BatchEventManager`` of the same app) are ignored, with a warning."""


class SyncEventManager(EventManager):
    """Delivers ODP events on the calling thread, without any background thread.

    Args:
        mode: ``"batch"`` (buffer until ``flush``/``close``) or ``"per_call"`` (one POST in each
            ``send``). See the module docstring for what happens on failures.
        batch_size, max_batch_bytes, max_queue_events, max_queue_bytes, request_timeout,
        retry_initial_backoff, retry_max_backoff, close_timeout, exit_timeout: as for
        ``BatchEventManager``; each falls back to its ``OPTIMIZELY_ODP_*`` environment variable,
        then to its default.

    Raises:
        SettingError: A setting (or ``mode``) has a value it cannot take.
    """

    def __init__(self, mode: Mode = "batch", *, batch_size: int | None = None,
                 max_batch_bytes: int | None = None, max_queue_events: int | None = None,
                 max_queue_bytes: int | None = None, request_timeout: float | None = None,
                 retry_initial_backoff: float | None = None, retry_max_backoff: float | None = None,
                 close_timeout: float | None = None, exit_timeout: float | None = None) -> None:
        if mode not in MODES:
            raise SettingError(f"argument mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        self.mode: Mode = mode
        self.settings = ManagerSettings.resolve({
            "batch_size": batch_size, "max_batch_bytes": max_batch_bytes, "max_queue_events": max_queue_events,
            "max_queue_bytes": max_queue_bytes, "request_timeout": request_timeout,
            "retry_initial_backoff": retry_initial_backoff, "retry_max_backoff": retry_max_backoff,
            "close_timeout": close_timeout, "exit_timeout": exit_timeout,
        }, ignored=UNUSED_SETTINGS)
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
        self._held_bytes = 0
        self._accepted = 0
        self._flushing = 0
        """Flushes (and a close) under way: retries within them are not left to wait long."""
        self._logs: list[tuple[str, str, str]] = []
        self._log_limiter = LogRateLimiter()
        self._transport = Transport(self.settings.request_timeout, pool_size=10)

    def start(self, *, logger: Any, notification_center: Any, integration: OdpIntegration | None) -> None:
        """Take the SDK's logger and notification center. Non-blocking."""
        super().start(logger=logger, notification_center=notification_center, integration=integration)
        unused = [f"{name} ({SETTINGS_BY_NAME[name].env_var})" for name in UNUSED_SETTINGS
                  if self.settings.sources[name] == "ignored"]
        if unused:
            self.logger.warning("ODP: SyncEventManager keeps events in memory and delivers them itself; "
                                f"ignored from the environment: {', '.join(unused)}.")

    def send(self, event: OdpEvent) -> SendResult:
        """Accept one event. Never raises; thread-safe. A refusal is returned, not counted here.

        Returns ACCEPTED when the event was buffered for delivery (whatever the outcome of a
        POST made here), else a discarded result (``queueFull``, ``closed``). In ``batch`` mode
        it does not block; in ``per_call`` mode it blocks for one request (about
        ``request_timeout`` at most), or not at all while the destination backs off.
        """
        if self._closed:
            return _closed()
        integration = event.integration
        if integration is None:  # the client binds every event before handing it over
            return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED, "ODP event has no integration.")
        try:
            body = event.to_json()
        except (TypeError, ValueError, OverflowError, RecursionError) as error:  # validated: only a bug gets here
            return SendResult.discarded(DiscardReason.INVALID_DATA, f"ODP event cannot be encoded: {error}")
        size = len(body) + WAITING_OVERHEAD
        s = self.settings
        batch: Batch | None = None
        with self._lock:  # close() sets _closed under this lock: an event buffered here is its to deliver
            if self._closed:
                return _closed()
            if self._held >= s.max_queue_events or self._held_bytes + size > s.max_queue_bytes:
                return SendResult.discarded(
                    DiscardReason.QUEUE_FULL, f"ODP event buffer is full ({s.max_queue_events} events / "
                    f"{s.max_queue_bytes} bytes); event discarded.")
            self._held += 1
            self._held_bytes += size
            dest = self._ledger.destination(integration)
            dest.waiting.append((self._accepted, event.accepted_at, body, 0))
            self._accepted += 1
            if self.mode == "per_call":
                self._cut(dest)
                batch = self._ledger.take_ready(dest, time.monotonic())
        if batch is not None:
            self._post(batch, s.request_timeout)
        return ACCEPTED

    def flush(self, timeout: float | None = None) -> bool:
        """Send every event accepted so far, on this thread, retrying within ``timeout`` seconds
        (None: :data:`DEFAULT_FLUSH_TIMEOUT`). True when all of it was delivered or finally
        resolved; False when time ran out (or a retry was due after it): what is undelivered
        stays for the next flush. No request outlasts the time left. Once ``close`` has started,
        returns its verdict (False while it runs). Blocks up to ``timeout``; thread-safe
        (concurrent flushes share the work)."""
        limit = wait_limit(timeout, DEFAULT_FLUSH_TIMEOUT)
        return self._flush(time.monotonic() + limit, final=False)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new events, flush within ``timeout`` (default: ``close_timeout``), then drop what
        is left (counted as ``shutdown`` and logged). True when nothing was left undelivered.
        Idempotent (a second call returns the first one's result). Blocks up to ``timeout``;
        thread-safe."""
        limit = wait_limit(timeout, self.settings.close_timeout)
        with self._lock:
            if self._closed:
                return self._close_result
            self._closed = True
            self._changed.notify_all()  # a flush waiting out a backoff elsewhere returns now
        try:
            delivered = self._flush(time.monotonic() + limit, final=True)
        except Exception as error:  # what is left is dropped and accounted for all the same
            self.logger.error(f"ODP event manager could not deliver at close: {type(error).__name__}.")
            delivered = False
        with self._lock:
            left = 0
            for dest in self._ledger.destinations.values():
                left += len(dest.waiting)
                self._held_bytes -= waiting_memory(dest.waiting)
                dest.waiting = []
            for batch in self._ledger.take_all():
                left += batch.count
                self._held_bytes -= _buffered_bytes(batch)
            in_flight = self._ledger.in_flight_events
            self._ledger.drop(left, DiscardReason.SHUTDOWN)
            self._held -= left
            self._close_result = delivered and not left and not in_flight
            self._finished = True
            output = self._take_output()
        self._emit(output)
        if left or in_flight:
            self.logger.error(f"ODP event manager closed with {left + in_flight} events undelivered "
                              f"(timeout {seconds(limit)}s).")
        self._log_limiter.flush()
        self._transport.close()
        lifecycle.untrack(self)
        return self._close_result

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters. Non-blocking; thread-safe."""
        with self._lock:
            stats = self._ledger.stats()
            stats.update(accepted=self._accepted, queued=self._held - self._ledger.in_flight_events,
                         queued_bytes=self._held_bytes)
            return stats

    def integration_changed(self, integration: OdpIntegration | None) -> None:
        """Events held back by a refused key (401/403) move to the new key. Non-blocking."""
        if integration is None:
            return
        with self._lock:
            self._ledger.move_refused(integration, self._log)
            output = self._take_output()
        self._emit(output)

    # -- internals ---------------------------------------------------------------------------
    def _cut(self, dest: Destination) -> None:
        """Turn the waiting events of ``dest`` into ready batches (lock held; they are encoded
        already, so this only groups their bytes; a body is joined when it is sent)."""
        s = self.settings
        while dest.waiting:
            dest.ready.append(seal(dest.integration, dest.take_batch(s.batch_size, s.max_batch_bytes)))

    def _flush(self, deadline: float, final: bool) -> bool:
        with self._lock:
            target = self._accepted
            self._flushing += 1
            self._ledger.hurry(time.monotonic())
        try:
            return self._flush_until(target, deadline, final)
        finally:
            with self._lock:
                self._flushing -= 1

    def _flush_until(self, target: int, deadline: float, final: bool) -> bool:
        while True:
            with self._lock:
                if self._closed and not final:  # close() decides what becomes of the rest
                    return self._finished and self._close_result
                oldest = self._ledger.oldest_unresolved()
                if oldest is None or oldest >= target:
                    return True
                now = time.monotonic()
                if now >= deadline - MIN_REQUEST_TIMEOUT:
                    return False
                batch, due = None, None
                for dest in list(self._ledger.destinations.values()):
                    self._cut(dest)
                    batch = self._ledger.take_ready(dest, now)
                    if batch is not None:
                        break
                    if dest.ready and dest.in_flight == 0:
                        due = dest.not_before if due is None else min(due, dest.not_before)
                if batch is None:
                    if due is not None and due >= deadline:
                        return False
                    self._changed.wait(max(0.0, min(deadline, due if due is not None else deadline) - now))
                    continue
            self._post(batch, min(self.settings.request_timeout, deadline - time.monotonic()))

    def _post(self, batch: Batch, timeout: float) -> None:
        """One POST of at most ``timeout`` seconds, without the lock; then record its outcome
        and notify listeners."""
        batch.attempts += 1
        outcome = self._transport.send(batch.destination, batch.body(), timeout=max(MIN_REQUEST_TIMEOUT, timeout))
        halves = batch.split() if outcome.kind is OutcomeKind.REJECTED and batch.count > 1 else None
        with self._lock:
            done = self._ledger.complete(batch, outcome, self._log, keep=not self._finished,
                                         hurry=self._flushing > 0, halves=halves)
            if done.resolved:
                self._held -= batch.count
                self._held_bytes -= _buffered_bytes(batch)
            elif done.fate is Fate.ABANDONED:
                self._ledger.drop(batch.count, DiscardReason.SHUTDOWN)
                self._held -= batch.count
                self._held_bytes -= _buffered_bytes(batch)
            elif done.fate is Fate.RETRY:
                self._log("warning", f"ODP request failed ({outcome.detail}); {batch.count} events kept for a "
                                     f"retry in {done.delay:.2f}s or later.", "failed requests kept for a retry")
            self._ledger.forget_if_idle(done.dest)
            self._changed.notify_all()
            output = self._take_output()
        self._emit(output)

    def _log(self, level: str, message: str, key: str = "") -> None:
        self._logs.append((level, message, key))

    def _take_output(self) -> tuple[list[notifications.Note], list[tuple[str, str, str]]]:
        logs, self._logs = self._logs, []
        return self._ledger.take_notes(), logs

    def _emit(self, output: tuple[list[notifications.Note], list[tuple[str, str, str]]]) -> None:
        notes, logs = output
        for level, message, key in logs:
            method = getattr(self.logger, level)
            if key:
                self._log_limiter.log(method, key, message)
            else:
                method(message)
        notifications.fire(self.notification_center, notes)

    def at_exit(self, started: float) -> None:
        self.close(lifecycle.exit_time_left(started, self.settings.exit_timeout))

    def after_fork_in_child(self) -> None:
        self._reset()


def _buffered_bytes(batch: Batch) -> int:
    """What the events of ``batch`` counted against ``max_queue_bytes`` when buffered (its size
    counts 2 bytes of punctuation per event besides their JSON)."""
    return batch.size - 2 * batch.count + WAITING_OVERHEAD * batch.count


def _closed() -> SendResult:
    return SendResult.discarded(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")
