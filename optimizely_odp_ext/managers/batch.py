"""The default event manager: batches in the background, several requests in flight.

The caller's thread checks capacity and appends the (already validated) event to a deque,
under a lock that is only ever held for a few operations, never while encoding or sending.

Workers (one thread at first, up to ``max_in_flight`` when there is more to do than one can
do) take turns at two jobs: cutting and encoding a batch, and sending one. A worker that
encodes a batch usually sends it too, so at low latency one thread does all the work and
nothing is handed from thread to thread; while requests wait for ODP, other workers encode
and send the next batches. Nothing is dropped except by the documented policies (refused by
the server, older than ``max_event_age``, left at shutdown), each counted, announced and logged.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

from optimizely_odp_ext import encoding, notifications
from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.managers import lifecycle
from optimizely_odp_ext.managers.base import DEFAULT_FLUSH_TIMEOUT, EventManager
from optimizely_odp_ext.managers.batching import (
    OBJECT_OVERHEAD,
    Batch,
    Destination,
    Encoded,
    Waiting,
    queued,
    seal,
    to_wire,
)
from optimizely_odp_ext.managers.ledger import Completion, DeliveryLedger, Fate
from optimizely_odp_ext.managers.spool_link import SpoolLink
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.settings import ManagerSettings
from optimizely_odp_ext.spool import Spool, SpoolId, SpoolRecord
from optimizely_odp_ext.spool.opening import SpoolProblem, open_configured_spool
from optimizely_odp_ext.transport import Outcome, OutcomeKind, Transport

SPAWN_LATENCY = 0.005
"""Seconds a request must take, on average, before a second worker is worth its GIL contention."""
CLAIM_CHUNK = 5000
"""Events a previous run left in the spool, read per call."""
ENCODED_OVERHEAD = 120
"""Bytes an already encoded event waiting for its batch takes beyond its JSON."""
_EXPIRY_CHECK_INTERVAL = 1.0
_RECOVERED_SEQ = -1
"""The acceptance order given to events read back from a spool: older than any of this run."""

Job = Callable[[], None]


class Output(NamedTuple):
    """Log lines and notifications collected under the lock, to emit without it."""

    number: int
    """Its place in the order outputs were taken; -1 when there is nothing to emit."""
    notes: list[notifications.Note]
    logs: list[tuple[str, str]]


def _resolves(outcome: Outcome, count: int) -> bool:
    """Whether the events of a batch with this outcome are done for good (delivered or refused)."""
    kind = outcome.kind
    return kind is OutcomeKind.DELIVERED or kind is OutcomeKind.FAILED or (
        kind is OutcomeKind.REJECTED and count <= 1)


class BatchEventManager(EventManager):
    """Delivers ODP events in batches from background threads.

    Every setting can be given as an argument, or as an ``OPTIMIZELY_ODP_*`` environment
    variable (see :mod:`optimizely_odp_ext.settings`). ``send`` never blocks (with a
    write-through spool it waits for the store's own write); ``flush`` and ``close`` block up
    to their timeout. All methods are thread-safe. Threads start with the first event, and
    again in a forked child.

    Args:
        spool: a store for accepted events (any :class:`~optimizely_odp_ext.spool.Spool`);
            default: the one ``spool_path`` names, or none.
        **settings: see :data:`optimizely_odp_ext.settings.SETTINGS`.

    Raises:
        SettingError: a setting has a value it cannot take, or the spool it names cannot be
            used (not writable, not a spool).
    """

    def __init__(self, *, spool: Spool | None = None, **settings: Any) -> None:
        self.settings = ManagerSettings.resolve(settings)
        self.logger: Any = lifecycle.NullLogger()
        self.notification_center: Any = None
        self._closed = False
        self._spool_problem: SpoolProblem | None = None
        self._link: SpoolLink | None = None
        if spool is None:
            spool, self._spool_problem = open_configured_spool(self.settings)
        if spool is not None:
            self._link = SpoolLink(spool, self.logger)
        self._init_runtime_state()
        lifecycle.track(self)

    # -- state that a forked child rebuilds -------------------------------------------------
    def _init_runtime_state(self) -> None:
        s = self.settings
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        """Idle workers wait here."""
        self._done = threading.Condition(self._lock)
        """Notified whenever events are resolved (delivered or given up), for flush()."""
        self._next_seq = 0
        """The acceptance order of the next event."""
        self._route: tuple[OdpIntegration | None, Destination | None] = (None, None)
        """The last integration an event went to and its destination (most events share one)."""
        self._accepted = 0
        self._recovered = 0
        self._held = 0
        """Events accepted or recovered and not resolved yet, wherever they are (in flight too)."""
        self._unencoded = 0
        """Of those, the events still held as the caller's objects."""
        self._encoded_bytes = 0
        """Memory of the rest (encoded events and batches), as counted against max_queue_bytes."""
        self._json_estimate = 300
        """Mean JSON size of an event so far."""
        self._unbound: list[Encoded] = []
        """Events read back from a spool whose destination was not known when they were parked."""
        self._ledger = DeliveryLedger(s)
        self._logs: list[tuple[str, str]] = []
        self._outputs_taken = 0
        self._unemitted: set[int] = set()
        """Outputs taken and not emitted yet (see :meth:`_emit`)."""
        self._transport = Transport(s.request_timeout, s.max_in_flight)
        self._sealing_events = 0
        self._workers = 0
        self._idle = 0
        self._request_time = 0.0
        """Mean duration of a request lately: more workers only help when requests are slow."""
        self._flushing = 0
        self._stopping = False
        self._finished = False
        """close() gave up on what was left: late outcomes are not kept for a retry."""
        self._close_result = False
        self._current: OdpIntegration | None = None
        self._integration_known = False
        self._next_expiry = 0.0
        self._pending_acks: list[SpoolId] = []
        self._tokens = itertools.count()
        self._spool_backlog = self._link is not None and not self._link.shared
        """A spool of a previous run may hold events not read yet."""
        self._claiming = False
        self._storing = 0
        """Callers writing an accepted event to a write-through spool right now."""

    # -- the caller's side -------------------------------------------------------------------
    def start(self, *, logger: Any, notification_center: Any, integration: OdpIntegration | None) -> None:
        """Take the SDK's logger and notification center; events a previous run left in the
        spool are read and delivered in the background. Non-blocking."""
        self.logger = logger
        self.notification_center = notification_center
        if self._spool_problem is not None:
            logger.error(self._spool_problem.message)
        link = self._link
        if link is not None:
            link.logger = logger
            for line in link.opening_log():
                logger.error(line)
        with self._lock:
            self._current = integration
            start = self._spool_backlog and self._reserve_worker()
        if start:
            self._start_worker()

    def send(self, event: OdpEvent) -> SendResult:
        """Queue one event. Non-blocking (with a write-through spool: waits for the store's
        write), thread-safe, never raises. A refusal is returned, not counted or logged here."""
        if self._closed:
            return _closed_result()
        integration = event.integration
        if integration is None:  # the client binds every event before handing it over
            return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED, "ODP event has no integration.")
        link = self._link
        if link is not None and link.write_through:
            return self._send_through(event, integration, link)
        estimate = self._json_estimate + OBJECT_OVERHEAD
        s = self.settings
        with self._lock:
            if self._closed:
                return _closed_result()
            if (self._held >= s.max_queue_events
                    or self._unencoded * estimate + self._encoded_bytes + estimate > s.max_queue_bytes):
                return _queue_full_result(s)
            self._held += 1
            self._unencoded += 1
            self._accepted += 1
            seq = self._next_seq
            self._next_seq = seq + 1
            dest = self._destination(integration)
            dest.waiting.append(queued(seq, event))
            start = self._wake_for(len(dest.waiting))
        if start:
            self._start_worker()
        return ACCEPTED

    def _send_through(self, event: OdpEvent, integration: OdpIntegration, link: SpoolLink) -> SendResult:
        """``send`` with a write-through spool: the event is stored before this returns."""
        try:
            body = encoding.encode(event.to_dict())
        except (TypeError, ValueError, OverflowError) as error:
            return SendResult.discarded(DiscardReason.INVALID_DATA, f"ODP event cannot be encoded: {error}")
        size = len(body) + ENCODED_OVERHEAD
        s = self.settings
        with self._lock:
            if self._closed:
                return _closed_result()
            if self._held >= s.max_queue_events or self._memory() + size > s.max_queue_bytes:
                return _queue_full_result(s)
            self._held += 1
            self._accepted += 1
            self._encoded_bytes += size
            seq = self._next_seq
            self._next_seq = seq + 1
            self._storing += 1
        try:
            ids = link.append([SpoolRecord(integration.host, integration.api_key, body, time.time())])
        finally:
            with self._lock:
                self._storing -= 1
                dest = self._destination(integration)
                dest.waiting.append(Encoded(seq, event.accepted_at, body, ids[0] if ids else 0))
                if len(dest.waiting) > 1 and dest.waiting[-2][0] > seq:  # another caller stored first
                    dest.waiting.sort(key=_seq_of)
                start = self._wake_for(len(dest.waiting))
        if start:
            self._start_worker()
        return ACCEPTED

    def _destination(self, integration: OdpIntegration) -> Destination:
        """Where events for ``integration`` wait (lock held); cheap for the usual single one."""
        last, dest = self._route
        if integration is last and dest is not None:
            return dest
        dest = self._ledger.destination(integration)
        self._route = (integration, dest)
        return dest

    def _wake_for(self, waiting: int) -> bool:
        """After an event joined a destination's queue of ``waiting`` (lock held): wake an idle
        worker when the first event arrives (to time the flush interval) or a batch is full;
        True when a worker must be started."""
        if self._idle:
            if waiting == 1 or waiting == self._cut_size():
                self._work.notify()
            return False
        return not self._workers and self._reserve_worker()

    def park(self, events: Sequence[OdpEvent]) -> int:
        """Store events whose destination is not known yet in the spool, for the next start.
        Blocks for the store's write; returns how many were stored (0 without a spool)."""
        link = self._link
        if link is None or not events:
            return 0
        now = time.time()
        records = []
        for event in events:
            try:
                records.append(SpoolRecord("", "", encoding.encode(event.to_dict()), now))
            except (TypeError, ValueError, OverflowError):
                continue
        ids = link.append(records)
        return len(ids) if ids else 0

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything accepted so far now, and wait until it was delivered or finally
        resolved: True then, False if ``timeout`` seconds (None: :data:`DEFAULT_FLUSH_TIMEOUT`)
        ran out first. Blocks up to ``timeout``; thread-safe."""
        limit = DEFAULT_FLUSH_TIMEOUT if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit
        with self._lock:
            target = self._next_seq
            if self._resolved_before(target) and self._announced_before(self._outputs_taken) and not (
                    self._logs or self._ledger.notes):
                return True
            self._flushing += 1
            try:
                self._ledger.hurry(time.monotonic())
                self._work.notify_all()
                if not self._workers and self._reserve_worker():
                    self._lock.release()
                    try:
                        self._start_worker()
                    finally:
                        self._lock.acquire()
                while not self._resolved_before(target):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._done.wait(remaining)
                return self._wait_announced(deadline)
            finally:
                self._flushing -= 1

    def _wait_announced(self, deadline: float) -> bool:
        """Wait (lock held) until the log lines and notifications of what was resolved are out,
        so that listeners have heard of every outcome when flush() returns True."""
        output = self._take_output()
        if output.number >= 0:
            self._lock.release()
            try:
                self._emit(output)
            finally:
                self._lock.acquire()
        number = self._outputs_taken
        while not self._announced_before(number):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._done.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting events, deliver what was accepted within ``timeout`` (default: the
        ``close_timeout`` setting), then stop. What is left is counted as dropped (reason
        ``shutdown``) and logged, except what a spool keeps for the next start. Idempotent (a
        second call returns the first one's verdict). Blocks up to ``timeout``; thread-safe."""
        with self._lock:
            if self._closed:
                return self._close_result
            self._closed = True
        limit = self.settings.close_timeout if timeout is None else max(0.0, timeout)
        delivered_all = self.flush(limit)
        with self._lock:
            self._stopping = self._finished = True
            dropped, kept = self._abandon_everything()
            in_flight = self._ledger.in_flight_events + self._sealing_events
            self._close_result = delivered_all and not dropped and not kept and not in_flight
            self._work.notify_all()
            self._done.notify_all()
            output = self._take_output()
            acks, self._pending_acks = self._pending_acks, []
        self._emit(output)
        if acks and self._link is not None:
            self._link.ack(acks)
        if dropped or kept or in_flight:
            where = f"; {kept} of them stay in the spool for the next start" if kept else ""
            flying = f"; {in_flight} were still in flight" if in_flight else ""
            if in_flight and self._link is not None:
                flying += " (undelivered ones stay in the spool)"
            self.logger.error(f"ODP event manager closed with {dropped + kept + in_flight} events undelivered "
                              f"(timeout {limit:g}s){where}{flying}.")
        self._transport.close()
        if self._link is not None:
            self._link.close()
        lifecycle.untrack(self)
        return self._close_result

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters. Non-blocking; thread-safe."""
        with self._lock:
            stats = self._ledger.stats()
            stats.update(
                accepted=self._accepted,
                recovered=self._recovered,
                queued=self._held - self._ledger.in_flight_events,
                queued_bytes=self._memory(),
            )
            unbound = len(self._unbound)
        if self._link is not None:
            stats["spool"] = self._link.state()
            stats["spool"]["awaiting_destination"] = unbound
        elif self._spool_problem is not None:
            stats["spool"] = self._spool_problem.state()
        return stats

    def integration_changed(self, integration: OdpIntegration | None) -> None:
        """Events held back by a refused key move to the new integration; events read back from a
        spool without a destination go to it (or, not integrated, are given up). Non-blocking."""
        with self._lock:
            self._current = integration
            self._integration_known = True
            unbound, self._unbound = self._unbound, []
            if integration is None:
                self._give_up(len(unbound), DiscardReason.ODP_NOT_INTEGRATED, [item.spool_id for item in unbound],
                              sum(len(item.body) + ENCODED_OVERHEAD for item in unbound))
            else:
                self._ledger.destination(integration).put_back_first(unbound)
                self._ledger.move_refused(integration, self._log)
            self._work.notify()
            start = not self._workers and self._held > 0 and self._reserve_worker()
            output = self._take_output()
        if start:
            self._start_worker()
        self._emit(output)

    # -- workers ---------------------------------------------------------------------------------
    def _reserve_worker(self) -> bool:
        """Count one more worker if one may start (lock held); the caller then calls
        :meth:`_start_worker` once it released the lock (starting a thread waits for it)."""
        if self._stopping or self._workers >= self.settings.max_in_flight:
            return False
        self._workers += 1
        return True

    def _start_worker(self) -> None:
        """Start a reserved worker (lock released)."""
        try:
            threading.Thread(target=self._run_worker, name="odp-worker", daemon=True).start()
        except BaseException:  # e.g. "can't start new thread": the others carry on
            with self._lock:
                self._workers -= 1
            raise

    def _run_worker(self) -> None:
        lock = self._lock
        with lock:
            try:
                while not self._stopping:
                    job = self._next_job(time.monotonic())
                    if job is None and (self._logs or self._ledger.notes):
                        job = functools.partial(self._emit, self._take_output())
                    if job is None:
                        self._idle += 1
                        try:
                            self._work.wait(self._wait_time())
                        finally:
                            self._idle -= 1
                        continue
                    lock.release()
                    try:
                        job()
                    except Exception as error:  # a bug must not stop delivery for good
                        self.logger.error(f"ODP worker error: {type(error).__name__}: {error}")
                    finally:
                        lock.acquire()
            finally:
                self._workers -= 1

    def _next_job(self, now: float) -> Job | None:
        """What a worker does next (lock held): send a ready batch, cut one, read the spool."""
        s, ledger = self.settings, self._ledger
        if self._pending_acks and self._link is not None:
            acks, self._pending_acks = self._pending_acks, []
            return functools.partial(self._link.ack, acks)
        if now >= self._next_expiry:
            self._expire(now)
        if len(ledger.in_flight) < s.max_in_flight:
            for dest in ledger.destinations.values():
                batch = ledger.take_ready(dest, now)
                if batch is not None:
                    self._more_hands()
                    return functools.partial(self._send_batch, batch)
        flushing = self._flushing > 0 or self._closed
        cut = self._cut_size()
        for dest in ledger.destinations.values():
            waiting = dest.waiting
            if waiting and (flushing or len(waiting) >= cut or waiting[0][1] + s.flush_interval <= now):
                items = dest.take_waiting(cut)
                token = next(self._tokens)
                ledger.sealing[token] = items[0][0]
                dest.sealing += 1
                self._sealing_events += len(items)
                self._more_hands()
                return functools.partial(self._seal_batch, dest, token, items)
        if self._spool_backlog and not self._claiming and self._room():
            self._claiming = True
            return functools.partial(self._claim_backlog, min(CLAIM_CHUNK, self._room()))
        return None

    def _more_hands(self) -> None:
        """A worker took a job: when requests are slow (while one waits for ODP another could
        encode and send), work is left and nobody is free, start another worker (lock held)."""
        if self._idle or self._request_time < SPAWN_LATENCY or self._workers >= self.settings.max_in_flight:
            return
        if any(d.ready or d.waiting for d in self._ledger.destinations.values()) and self._reserve_worker():
            self._lock.release()
            try:
                self._start_worker()
            finally:
                self._lock.acquire()

    def _wait_time(self) -> float | None:
        """Seconds until a worker has something to do unasked (None: until woken). Lock held."""
        s, now = self.settings, time.monotonic()
        times = []
        if self._held:
            times.append(self._next_expiry)
        slots_free = len(self._ledger.in_flight) < s.max_in_flight
        for dest in self._ledger.destinations.values():
            if dest.waiting:
                times.append(dest.waiting[0][1] + s.flush_interval)
            if dest.ready and slots_free and (dest.failures == 0 or dest.in_flight == 0):
                times.append(dest.not_before)
        return max(0.0, min(times) - now) if times else None

    def _cut_size(self) -> int:
        """Events per batch: ``batch_size``, fewer when events are large (``max_batch_bytes``)."""
        s = self.settings
        return max(1, min(s.batch_size, s.max_batch_bytes * 4 // (5 * max(1, self._json_estimate))))

    def _seal_batch(self, dest: Destination, token: int, items: list[Waiting]) -> None:
        """Encode waiting events into batches (no lock), then make them ready."""
        objects = sum(1 for item in items if type(item) is tuple)
        encoded_memory = _encoded_memory(items)
        failed: list[Waiting] = []
        try:
            batches = self._fit(seal(dest.integration, items, self._json_estimate))
        except (TypeError, ValueError, OverflowError, RecursionError):
            batches, failed = self._seal_one_by_one(dest.integration, items)
        with self._lock:
            del self._ledger.sealing[token]
            dest.sealing -= 1
            self._sealing_events -= len(items)
            self._unencoded -= objects
            self._encoded_bytes -= encoded_memory
            events = sum(batch.count for batch in batches)
            if events:
                size = sum(len(batch.body) for batch in batches) // events
                self._json_estimate += (size - self._json_estimate) // 8
            if failed:
                self._log("error", f"ODP: {len(failed)} events could not be encoded and are dropped.")
                self._give_up(len(failed), DiscardReason.INTERNAL_ERROR, _spool_ids(failed), 0)
            for batch in batches:
                self._encoded_bytes += batch.memory
            if self._finished:
                self._abandon(batches)
            else:
                current = self._current
                if dest.unauthorized and current is not None and current != dest.integration:
                    self._ledger.move(current, dest, batches, self._log)
                else:
                    dest.ready.extend(batches)
            output = self._take_output()
        self._emit(output)

    def _fit(self, batch: Batch) -> list[Batch]:
        """Split a batch until each part fits ``max_batch_bytes`` (rare: sizes are estimated)."""
        if len(batch.body) <= self.settings.max_batch_bytes or batch.count <= 1:
            return [batch]
        first, second = batch.split()
        return self._fit(first) + self._fit(second)

    def _seal_one_by_one(self, integration: OdpIntegration,
                         items: list[Waiting]) -> tuple[list[Batch], list[Waiting]]:
        """Encode events one at a time, so only those that cannot be encoded are lost."""
        good: list[Waiting] = []
        failed: list[Waiting] = []
        for item in items:
            try:
                good.append(item if type(item) is Encoded else Encoded(
                    item[0], item[1], encoding.encode(to_wire(item)), 0))  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError, RecursionError):
                failed.append(item)
        batches = self._fit(seal(integration, good, self._json_estimate)) if good else []
        for batch in batches:  # they were objects: not in any spool
            if batch.spool_ids is not None and not any(batch.spool_ids):
                batch.spool_ids = None
        return batches, failed

    def _send_batch(self, batch: Batch) -> None:
        """One POST (no lock), then its outcome."""
        batch.attempts += 1
        started = time.monotonic()
        outcome = self._transport.send(batch.destination, batch.body)
        took = time.monotonic() - started
        halves = None
        if outcome.kind is OutcomeKind.REJECTED and batch.count > 1 and not self._finished:
            halves = batch.split()
        if batch.spool_ids and self._link is not None and _resolves(outcome, batch.count):
            self._link.ack(batch.spool_ids)  # before flush() can see these events resolved
        with self._lock:
            self._request_time += (took - self._request_time) * 0.25
            done = self._ledger.complete(batch, outcome, self._log, keep=not self._finished,
                                         new_key=self._current, hurry=self._flushing > 0 or self._closed,
                                         halves=halves)
            self._after(batch, outcome, done, halves)
            output = self._take_output()
        self._emit(output)

    def _after(self, batch: Batch, outcome: Outcome, done: Completion, halves: tuple[Batch, Batch] | None) -> None:
        """This manager's part of an outcome (lock held): memory, spool and the retry warning."""
        if done.resolved:
            self._held -= batch.count
            self._encoded_bytes -= batch.memory
            self._done.notify_all()
        elif done.fate is Fate.ABANDONED:
            self._abandon([batch])
        elif done.fate is Fate.SPLIT and halves is not None:
            self._encoded_bytes += halves[0].memory + halves[1].memory - batch.memory
        elif done.fate is Fate.MOVE and self._current is not None:
            self._ledger.move(self._current, done.dest, [batch], self._log)
        elif done.fate is Fate.RETRY:
            message = (f"ODP request failed ({outcome.detail}); {batch.count} events kept, "
                       f"retry #{done.dest.failures} in {done.delay:.2f}s.")
            if done.dest.unauthorized:
                message += f" The key {mask_key(batch.destination.api_key)} is refused: waiting for a new one."
            self._log("warning", message)
        if self._ledger.forget_if_idle(done.dest):
            self._route = (None, None)

    def _claim_backlog(self, limit: int) -> None:
        """Read events a previous run left in the spool (no lock), then queue them."""
        assert self._link is not None
        try:
            claimed = self._link.claim(limit)
        except BaseException:
            with self._lock:
                self._claiming = False
            raise
        now_wall, now = time.time(), time.monotonic()
        with self._lock:
            by_destination: dict[OdpIntegration | None, list[Encoded]] = {}
            for row in claimed:
                destination = OdpIntegration(row.host, row.api_key) if row.host else self._current
                item = Encoded(_RECOVERED_SEQ, now - max(0.0, now_wall - row.accepted_at), row.body, row.id)
                by_destination.setdefault(destination, []).append(item)
                self._held += 1
                self._recovered += 1
                self._encoded_bytes += len(row.body) + ENCODED_OVERHEAD
            for destination, items in by_destination.items():
                if destination is not None:
                    self._ledger.destination(destination).put_back_first(items)
                elif self._integration_known:  # parked before a datafile, and ODP is not integrated
                    self._give_up(len(items), DiscardReason.ODP_NOT_INTEGRATED, [i.spool_id for i in items],
                                  _encoded_memory(items))
                else:
                    self._unbound += items
            self._spool_backlog = len(claimed) >= limit
            self._claiming = False
            if claimed:
                self._log("info", f"ODP: {len(claimed)} events from the spool of a previous run will be delivered.")
            output = self._take_output()
        self._emit(output)

    # -- bookkeeping (lock held) -----------------------------------------------------------------
    def _memory(self) -> int:
        return self._unencoded * (self._json_estimate + OBJECT_OVERHEAD) + self._encoded_bytes

    def _room(self) -> int:
        return max(0, self.settings.max_queue_events - self._held)

    def _resolved_before(self, target: int) -> bool:
        """Every event accepted before ``target``, and every one a previous run left in the spool,
        is resolved."""
        if self._spool_backlog or self._claiming or self._storing or self._unbound:
            return False
        oldest = self._ledger.oldest_unresolved()
        return oldest is None or oldest >= target

    def _expire(self, now: float) -> None:
        self._next_expiry = now + _EXPIRY_CHECK_INTERVAL
        cutoff = now - self.settings.max_event_age
        for dest in self._ledger.destinations.values():
            expired = dest.take_expired(cutoff)
            if expired:
                count = sum(batch.count for batch in expired)
                self._log("error", f"ODP gave up {count} events older than {self.settings.max_event_age:g}s "
                                   f"(destination {dest.integration.host}).")
                self._give_up(count, DiscardReason.EXPIRED, [i for b in expired for i in b.spool_ids or ()],
                              sum(batch.memory for batch in expired))

    def _give_up(self, count: int, reason: DiscardReason, spool_ids: list[SpoolId], memory: int) -> None:
        """Events given up for good: counted, announced, and their spool rows removed (soon)."""
        if not count:
            return
        self._ledger.drop(count, reason)
        self._held -= count
        self._encoded_bytes -= memory
        self._pending_acks.extend(i for i in spool_ids if i)
        self._done.notify_all()

    def _abandon(self, batches: list[Batch]) -> tuple[int, int]:
        """After close gave up: what a spool holds stays there for the next start; the rest is
        dropped (``shutdown``). Returns (dropped, kept)."""
        dropped = kept = 0
        for batch in batches:
            ids = batch.spool_ids or ()
            in_spool = sum(1 for i in ids if i)
            kept += in_spool
            dropped += batch.count - in_spool
            self._encoded_bytes -= batch.memory
        self._ledger.drop(dropped, DiscardReason.SHUTDOWN)
        self._held -= dropped
        self._done.notify_all()
        return dropped, kept

    def _abandon_everything(self) -> tuple[int, int]:
        """At close, after the flush: everything not in flight or being encoded. (dropped, kept)"""
        dropped = kept = 0
        for dest in self._ledger.destinations.values():
            for item in dest.waiting:
                if type(item) is tuple:
                    self._unencoded -= 1
                    dropped += 1
                elif isinstance(item, Encoded):
                    self._encoded_bytes -= len(item.body) + ENCODED_OVERHEAD
                    if item.spool_id:
                        kept += 1
                    else:
                        dropped += 1
            dest.waiting = []
        self._ledger.drop(dropped, DiscardReason.SHUTDOWN)
        self._held -= dropped
        more_dropped, more_kept = self._abandon(self._ledger.take_all())
        return dropped + more_dropped, kept + more_kept + len(self._unbound)

    def _log(self, level: str, message: str) -> None:
        """Log once the lock is released (lock held)."""
        self._logs.append((level, message))

    def _take_output(self) -> Output:
        """The log lines and notifications collected so far, for :meth:`_emit` (lock held)."""
        logs, self._logs = self._logs, []
        notes = self._ledger.take_notes()
        if not (logs or notes):
            return Output(-1, notes, logs)
        number = self._outputs_taken
        self._outputs_taken += 1
        self._unemitted.add(number)
        return Output(number, notes, logs)

    def _emit(self, output: Output) -> None:
        """Write the collected log lines and fire the notifications (lock released); flush()
        returns only once what was collected before it saw its events resolved is out."""
        if output.number < 0:
            return
        try:
            for level, message in output.logs:
                getattr(self.logger, level)(message)
            notifications.fire(self.notification_center, output.notes)
        finally:
            with self._lock:
                self._unemitted.discard(output.number)
                self._done.notify_all()

    def _announced_before(self, number: int) -> bool:
        """Every output taken before ``number`` was emitted (lock held)."""
        return not self._unemitted or min(self._unemitted) >= number

    # -- fork and exit ---------------------------------------------------------------------------
    def after_fork_in_child(self) -> None:
        """The parent keeps delivering what it queued; the child starts afresh, in memory: a
        spool that allows one process belongs to the process that opened it."""
        if self._link is not None and not self._link.shared:
            self._link = None
            self._spool_problem = SpoolProblem.lost_in_fork()
        self._init_runtime_state()

    def at_exit(self) -> None:
        if not self._closed:
            self.close(self.settings.exit_timeout)


def _spool_ids(items: list[Waiting]) -> list[SpoolId]:
    return [item.spool_id for item in items if isinstance(item, Encoded) and item.spool_id]


def _encoded_memory(items: Sequence[Waiting]) -> int:
    """What the already encoded events among ``items`` count against ``max_queue_bytes``."""
    return sum(len(item.body) + ENCODED_OVERHEAD for item in items if type(item) is Encoded)


def _seq_of(item: Waiting) -> int:
    return item[0]


def _closed_result() -> SendResult:
    return SendResult.discarded(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")


def _queue_full_result(s: ManagerSettings) -> SendResult:
    return SendResult.discarded(
        DiscardReason.QUEUE_FULL,
        f"ODP event queue is full ({s.max_queue_events} events / {s.max_queue_bytes} bytes); event discarded.")
