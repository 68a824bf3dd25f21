"""The default event manager: batches in the background, several requests in flight.

The caller's thread encodes the (already validated) event, checks capacity and appends its
bytes to its destination's list, under a lock that is only ever held for a few operations,
never while encoding or sending.

Workers (one thread at first, up to ``max_in_flight`` when there is more to do than one can
do) take turns at two jobs: cutting a batch, and sending one (its body joined from its events' bytes). A
worker that cuts a batch usually sends it too, so at low latency one thread does all the work
and nothing is handed from thread to thread; while requests wait for ODP, other workers cut
and send the next batches. Nothing is dropped except by the documented policies (refused by
the server, older than ``max_event_age``, left at shutdown), each counted, announced and logged.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers import heap, lifecycle
from optimizely_odp_ext.managers.base import DEFAULT_FLUSH_TIMEOUT, EventManager, wait_limit
from optimizely_odp_ext.managers.batching import SPOOL_ID, WAITING_OVERHEAD, waiting_memory
from optimizely_odp_ext.managers.convoy import acquire_contended
from optimizely_odp_ext.managers.fleet import STORE_CHUNK, FleetJobs
from optimizely_odp_ext.managers.jobs import DeliveryJobs
from optimizely_odp_ext.managers.state import seq_of
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.settings import ManagerSettings, MiB, seconds
from optimizely_odp_ext.spool import Spool, SpoolId, SpoolRecord

if TYPE_CHECKING:  # imported when a spool is configured: a manager without one loads neither
    from optimizely_odp_ext.managers.spool_link import SpoolLink
    from optimizely_odp_ext.spool.opening import SpoolProblem

SPAWN_LATENCY = 0.015
"""Seconds a request must wait for ODP, on average, before a second worker is worth its GIL
contention (and, with ``n`` workers, at least ``2 n`` times a worker's own work per batch)."""
CLAIM_CHUNK = 5000
"""Events a previous run left in the spool, read per call."""
SETTLE_POLL = 0.05

Job = Callable[[], None]


class BatchEventManager(DeliveryJobs, FleetJobs, EventManager):
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
        self._set_up(ManagerSettings.resolve(settings), spool)

    @classmethod
    def from_settings(cls, settings: ManagerSettings, spool: Spool | None = None) -> BatchEventManager:
        """A manager with settings resolved before (:meth:`ManagerSettings.resolve`): arguments
        and environment are not read again. Raises :class:`SettingError` as the constructor
        does for the spool the settings name."""
        manager = cls.__new__(cls)
        manager._set_up(settings, spool)
        return manager

    def _set_up(self, settings: ManagerSettings, spool: Spool | None) -> None:
        self.settings = settings
        self.logger: Any = lifecycle.NullLogger()
        self.notification_center: Any = None
        self._closed = False
        self._spool_problem: SpoolProblem | None = None
        self._link: SpoolLink | None = None
        if spool is None and (self.settings.spool_path or self.settings.spool_url):
            from optimizely_odp_ext.spool.opening import open_configured_spool

            spool, self._spool_problem = open_configured_spool(self.settings)
        if spool is not None:
            from optimizely_odp_ext.managers.spool_link import SpoolLink

            self._link = SpoolLink(spool, self.logger)
        self._init_runtime_state()
        lifecycle.track(self)

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
            deliverer = self._fleet and self.settings.deliver  # claims from the fleet's stream at once
            start = (self._spool_backlog or deliverer) and self._reserve_worker()
        if start:
            self._start_worker()

    def send(self, event: OdpEvent) -> SendResult:
        """Encode and queue one event. Non-blocking (with a write-through spool: waits for the
        store's write), thread-safe, never raises. A refusal is returned, not counted or logged
        here."""
        if self._closed:
            return _closed_result()
        integration = event.integration
        if integration is None:  # the client binds every event before handing it over
            return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED, "ODP event has no integration.")
        try:
            body = event.to_json()
        except (TypeError, ValueError, OverflowError, RecursionError) as error:  # validated: only a bug gets here
            return SendResult.discarded(DiscardReason.INVALID_DATA, f"ODP event cannot be encoded: {error}")
        size = len(body) + WAITING_OVERHEAD
        link = self._link
        if link is not None and link.write_through:
            return self._send_through(event, integration, link, body, size)
        s = self.settings
        lock = self._lock.raw
        if not lock.acquire(False):
            acquire_contended(lock)  # not `with`: a blocked sender would start a lock convoy
        try:
            if self._closed:
                return _closed_result()
            if self._held >= s.max_queue_events or self._queued_bytes + size > s.max_queue_bytes:
                return _queue_full_result(s)
            self._held += 1
            self._queued_bytes += size
            seq = self._next_seq
            self._next_seq = seq + 1
            if self._fleet:
                self._to_store.append((integration, (seq, event.accepted_at, body, 0)))
                start = self._wake_for(len(self._to_store), STORE_CHUNK)
            else:
                last, dest = self._route
                if integration is not last or dest is None:
                    dest = self._destination(integration)
                dest.waiting.append((seq, event.accepted_at, body, 0))
                start = self._wake_for(len(dest.waiting), self._cut_events)
        finally:
            lock.release()
        if start:
            self._start_worker()
        return ACCEPTED

    def _send_through(self, event: OdpEvent, integration: OdpIntegration, link: SpoolLink, body: bytes,
                      size: int) -> SendResult:
        """``send`` with a write-through spool: the event is stored before this returns."""
        s = self.settings
        with self._lock:
            if self._closed:
                return _closed_result()
            if self._held >= s.max_queue_events or self._queued_bytes + size > s.max_queue_bytes:
                return _queue_full_result(s)
            self._held += 1
            self._queued_bytes += size
            seq = self._next_seq
            self._next_seq = seq + 1
            self._storing += 1
        try:
            ids = link.append([SpoolRecord(integration.host, integration.api_key, body, time.time())])
        finally:
            with self._lock:
                self._storing -= 1
                dest = self._destination(integration)
                dest.waiting.append((seq, event.accepted_at, body, ids[0] if ids else 0))
                if len(dest.waiting) > 1 and dest.waiting[-2][0] > seq:  # another caller stored first
                    dest.waiting.sort(key=seq_of)
                start = self._wake_for(len(dest.waiting), self._cut_events)
        if start:
            self._start_worker()
        return ACCEPTED

    def _wake_for(self, waiting: int, full: int) -> bool:
        """After an event joined a queue of ``waiting`` (lock held): wake an idle worker when the
        first event arrives (to time the flush interval, or an append's linger) or when ``full``
        are waiting (a batch to cut; in a fleet, a chunk to append at once); True when a worker
        must be started."""
        if self._idle:
            if waiting == 1 or waiting == full:
                self._work.notify()
            return False
        return not self._workers and self._reserve_worker()

    def park(self, events: Sequence[OdpEvent]) -> int:
        """Store events whose destination is not known yet in the spool, for the next start.
        Blocks for the store's write; returns how many were stored (0 without a spool, and with
        a shared one: another process of the fleet could not tell where they go)."""
        link = self._link
        if link is None or link.shared or not events:
            return 0
        now = time.time()
        records = []
        for event in events:
            try:
                records.append(SpoolRecord("", "", event.to_json(), now))
            except (TypeError, ValueError, OverflowError):
                continue
        ids = link.append(records)
        return len(ids) if ids else 0

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything accepted so far now, and wait until it was delivered or finally
        resolved: True then, False if ``timeout`` seconds (None: :data:`DEFAULT_FLUSH_TIMEOUT`)
        ran out first. Blocks up to ``timeout``; thread-safe."""
        limit = wait_limit(timeout, DEFAULT_FLUSH_TIMEOUT)
        deadline = time.monotonic() + limit
        with self._lock:
            target = self._next_seq
            if self._fleet:
                self._flushing += 1
                try:
                    return self._flush_fleet(target, deadline) and self._wait_announced(deadline)
                finally:
                    self._flushing -= 1
            if self._resolved_before(target) and self._announced_before(self._outputs_taken) and not (
                    self._logs or self._ledger.notes):
                return True
            self._flushing += 1
            self._flush_through = max(self._flush_through, target)
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
        limit = wait_limit(timeout, self.settings.close_timeout)
        with self._lock:
            if self._closed:
                return self._close_result
            self._closed = True
        deadline = time.monotonic() + limit
        try:
            delivered_all = self.flush(limit)
        except Exception as error:  # the manager stops and accounts for what it holds all the same
            self.logger.error(f"ODP event manager could not deliver at close: {type(error).__name__}.")
            delivered_all = False
        with self._lock:
            self._stopping = self._finished = True
            dropped, kept = self._abandon_everything()
            in_flight = self._ledger.in_flight_events + self._sealing_events
            self._work.notify_all()
            self._done.notify_all()
            output = self._take_output()
            acks, self._pending_acks = self._pending_acks, []
        self._emit(output)
        link = self._link
        if acks and link is not None:
            link.ack(acks)
        if link is not None and link.shared:
            dropped += self._give_back(kept)
            in_flight = self._settle(deadline)
            with self._lock:
                late = self._take_late_claims()
            if late:
                self._give_back(late)
                kept += late
        self._close_result = delivered_all and not dropped and not kept and not in_flight
        if dropped or kept or in_flight:
            if link is not None and link.shared:
                where = f"; {len(kept)} claimed ones were handed back to the fleet" if kept else ""
            else:
                where = f"; {len(kept)} of them stay in the spool for the next start" if kept else ""
            flying = f"; {in_flight} were still in flight" if in_flight else ""
            if in_flight and link is not None:
                flying += " (undelivered ones stay in the spool)"
            # Handing claimed events back to a fleet loses nothing: not an error.
            log = self.logger.error if dropped or not (link is not None and link.shared) else self.logger.warning
            log(f"ODP event manager closed with {dropped + len(kept) + in_flight} events "
                f"undelivered (timeout {seconds(limit)}s){where}{flying}.")
        self._log_limiter.flush()
        self._transport.close()
        if self._link is not None:
            self._link.close()
        lifecycle.untrack(self)
        return self._close_result

    def _settle(self, deadline: float) -> int:
        """At close, in a fleet (lock released): wait until the requests under way and a claim
        under way ended, or ``deadline``, so that what ODP acknowledges is acknowledged in the
        shared spool before it closes (else another member delivers it again), and what a claim
        under way takes is handed back too (else it waits ``claim_after``). Returns the events
        still in flight."""
        with self._lock:
            while self._ledger.in_flight_events + self._sealing_events or self._claiming:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(min(remaining, SETTLE_POLL))  # a claim ending does not notify _done
            return self._ledger.in_flight_events + self._sealing_events

    def _take_late_claims(self) -> list[SpoolId]:
        """At close, after :meth:`_settle` (lock held): the claimed events that a claim under way
        placed after the rest was handed back, taken out to be handed back too."""
        late: list[SpoolId] = []
        for dest in self._ledger.destinations.values():
            claimed = [item for item in dest.waiting if item[SPOOL_ID]]
            if claimed:
                late += [item[SPOOL_ID] for item in claimed]
                self._queued_bytes -= waiting_memory(claimed)
                dest.waiting = [item for item in dest.waiting if not item[SPOOL_ID]]
        return late

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters. Non-blocking; thread-safe."""
        with self._lock:
            stats = self._ledger.stats()
            stats.update(
                accepted=self._next_seq,
                recovered=self._recovered,
                queued=self._held - self._ledger.in_flight_events,
                queued_bytes=self._queued_bytes,
            )
            if self._fleet:
                stats.update(self._fleet_stats())
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
                self._give_up(len(unbound), DiscardReason.ODP_NOT_INTEGRATED, [item[SPOOL_ID] for item in unbound],
                              waiting_memory(unbound))
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
        if self._stopping or self._workers > self.settings.max_in_flight:
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
                    if job is None and self._held == 0 and self._backlog_peak >= heap.TRIM_AFTER:
                        job, self._backlog_peak = functools.partial(self._give_back_memory, self._backlog_peak), 0
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

    def _give_back_memory(self, backlog: int) -> None:
        """A backlog drained: the memory it took goes back to the system (not only to the heap)."""
        if heap.give_back():
            self.logger.debug(f"ODP: a backlog of {backlog / MiB:.0f} MiB drained; its memory was handed back "
                              "to the system (malloc_trim).")

    def _next_job(self, now: float) -> Job | None:
        """What a worker does next (lock held): send a ready batch, cut one, read the spool."""
        s, ledger = self.settings, self._ledger
        if self._pending_acks and self._link is not None:
            acks, self._pending_acks = self._pending_acks, []
            return functools.partial(self._link.ack, acks)
        fleet = self._fleet
        if fleet:
            job = self._store_job(now)
            if job is not None:
                return job
        if now >= self._next_expiry:
            self._expire(now)
        if len(ledger.in_flight) < s.max_in_flight:
            for dest in ledger.destinations.values():
                batch = ledger.take_ready(dest, now)
                if batch is not None:
                    self._more_hands()
                    return functools.partial(self._send_batch, batch)
        flushing = self._flushing > 0 or self._closed
        cut, flush_through = self._cut_events, self._flush_through
        for dest in ledger.destinations.values():
            waiting = dest.waiting
            if waiting and (flushing or len(waiting) >= cut or waiting[0][1] + s.flush_interval <= now
                            or waiting[0][0] < flush_through):
                items = dest.take_batch(s.batch_size, s.max_batch_bytes)
                token = next(self._tokens)
                ledger.sealing[token] = items[0][0]
                dest.sealing += 1
                self._sealing_events += len(items)
                self._more_hands()
                return functools.partial(self._seal_batch, dest, token, items)
        if fleet:
            return self._claim_job(now)
        if self._spool_backlog and not self._claiming and self._room():
            self._claiming = True
            return functools.partial(self._claim_backlog, min(CLAIM_CHUNK, self._room()))
        return None

    def _more_hands(self) -> None:
        """A worker took a job: when work is left, nobody is free, and requests wait on ODP long
        enough that another worker would cut batches meanwhile, start one (lock held). Up to
        ``max_in_flight + 1`` workers: one can cut ahead while ``max_in_flight`` wait. A
        worker's own work per batch (cutting it and joining its body; in a fleet also appending and claiming, in the
        Redis client) must be well under the wait: otherwise more workers only take turns at
        the GIL, and application threads wait for the lock behind them."""
        waiting = self._odp_wait
        own_work = self._encode_time + self._fleet_work * self._cut_events
        if (self._idle or waiting < SPAWN_LATENCY or waiting < 2 * own_work * self._workers
                or self._workers > self.settings.max_in_flight):
            return
        work_left = any(d.ready or d.waiting for d in self._ledger.destinations.values()) or (
            self._fleet and self._can_claim())  # a member's next batch is in the stream
        if work_left and self._reserve_worker():
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
        if self._fleet:
            times += self._fleet_due()
        return max(0.0, min(times) - now) if times else None

    # -- bookkeeping (lock held) -----------------------------------------------------------------
    def _resolved_before(self, target: int) -> bool:
        """Every event accepted before ``target``, and every one a previous run left in the spool,
        is resolved."""
        if self._spool_backlog or self._claiming or self._storing or self._unbound:
            return False
        oldest = self._ledger.oldest_unresolved()
        return oldest is None or oldest >= target

    # -- fork and exit ---------------------------------------------------------------------------
    def after_fork_in_child(self) -> None:
        """The parent keeps delivering what it queued; the child starts afresh, in memory: a
        spool that allows one process belongs to the process that opened it."""
        if self._link is not None and not self._link.shared:
            self._link = None
            from optimizely_odp_ext.spool.opening import SpoolProblem

            self._spool_problem = SpoolProblem.lost_in_fork()
        self._init_runtime_state()

    def at_exit(self, started: float) -> None:
        if not self._closed:
            self.close(lifecycle.exit_time_left(started, self.settings.exit_timeout))


def _closed_result() -> SendResult:
    return SendResult.discarded(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")


def _queue_full_result(s: ManagerSettings) -> SendResult:
    return SendResult.discarded(
        DiscardReason.QUEUE_FULL,
        f"ODP event queue is full ({s.max_queue_events} events / {s.max_queue_bytes} bytes); event discarded.")
