"""The state of a :class:`~optimizely_odp_ext.managers.batch.BatchEventManager` and the
bookkeeping every part of it shares: what it holds, what that costs in memory, what it gave
up, and the log lines and notifications collected under its lock.

Every method here runs with the manager's lock held unless its docstring says otherwise.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from optimizely_odp_ext import notifications
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.logs import LogRateLimiter
from optimizely_odp_ext.managers.batching import SPOOL_ID, Batch, Destination, Waiting, waiting_memory
from optimizely_odp_ext.managers.convoy import PoliteLock
from optimizely_odp_ext.managers.ledger import DeliveryLedger
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.settings import ManagerSettings
from optimizely_odp_ext.spool import SpooledEvent, SpoolId
from optimizely_odp_ext.transport import Transport

if TYPE_CHECKING:
    from optimizely_odp_ext.managers.spool_link import SpoolLink

RECOVERED_SEQ = -1
"""The acceptance order given to events read back from a spool: older than any of this run."""


class Output(NamedTuple):
    """Log lines and notifications collected under the lock, to emit without it."""

    number: int
    """Its place in the order outputs were taken; -1 when there is nothing to emit."""
    notes: list[notifications.Note]
    logs: list[tuple[str, str, str]]


class ManagerState:
    """What a manager holds and the bookkeeping of it (see the module docstring)."""

    settings: ManagerSettings
    logger: Any
    notification_center: Any
    _closed: bool
    _link: SpoolLink | None

    # -- state that a forked child rebuilds -------------------------------------------------
    def _init_runtime_state(self) -> None:
        s = self.settings
        self._lock = PoliteLock()
        self._work = threading.Condition(self._lock)  # type: ignore[arg-type]  # a lock by its methods
        """Idle workers wait here."""
        self._done = threading.Condition(self._lock)  # type: ignore[arg-type]
        """Notified whenever events are resolved (delivered or given up), for flush()."""
        self._next_seq = 0
        """The acceptance order of the next event: how many were accepted."""
        self._route: tuple[OdpIntegration | None, Destination | None] = (None, None)
        """The last integration an event went to and its destination (most events share one)."""
        self._recovered = 0
        self._held = 0
        """Events accepted or recovered and not resolved yet, wherever they are (in flight too)."""
        self._queued_bytes = 0
        """What the events held count against max_queue_bytes (waiting, and in batches)."""
        self._backlog_peak = 0
        """The most ``_queued_bytes`` seen as events left since the heap was last trimmed."""
        self._json_estimate = 300
        """Mean JSON size of an event lately (of the batches cut)."""
        self._cut_events = self._cut_size()
        """:meth:`_cut_size` at today's estimate: the waiting events that make a full batch."""
        self._unbound: list[Waiting] = []
        """Events read back from a spool whose destination was not known when they were parked."""
        self._ledger = DeliveryLedger(s)
        self._logs: list[tuple[str, str, str]] = []
        self._log_limiter = LogRateLimiter()
        self._outputs_taken = 0
        self._unemitted: set[int] = set()
        """Outputs taken and not emitted yet (see :meth:`_emit`)."""
        self._transport = Transport(s.request_timeout, s.max_in_flight)
        self._sealing_events = 0
        self._workers = 0
        self._idle = 0
        self._odp_wait = 0.0
        """Mean time a request waited for ODP lately (its duration less the turns of the GIL it
        waited for: :func:`.jobs.waited_on_odp`): more workers only help when ODP is slow to
        answer, not when a busy process is slow to let the worker read the answer."""
        self._encode_time = 0.0
        """Mean time making a batch of cut events took lately (small: its body is joined when sent)."""
        self._fleet_work = 0.0
        """In a fleet: mean CPU time of the worker's thread appending or claiming took lately, per
        event (its own work besides cutting batches, which more workers would do at the same time
        and take turns at the GIL for; waiting for Redis is not work: another worker may run)."""
        self._flushing = 0
        self._flush_through = RECOVERED_SEQ
        """Events accepted before this number go out now, without waiting for a full batch or the
        flush interval: a flush() asked for them (one with no time to wait for them too)."""
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
        # a shared spool (a fleet: see fleet.py)
        self._to_store: list[tuple[OdpIntegration, Waiting]] = []
        """Accepted events waiting to be appended to the shared spool, oldest first."""
        self._store_in_progress: list[tuple[OdpIntegration, Waiting]] = []
        self._store_failures = 0
        self._store_not_before = 0.0
        self._last_stored_id: SpoolId | None = None
        self._spooled = 0
        """Events this process handed to the fleet (appended to the shared spool)."""
        self._claimed = 0
        """Events this process took from the shared spool to deliver."""
        self._released = 0
        """Claimed events handed back undelivered at close, for another process."""
        self._lost_claims = 0
        self._next_claim = 0.0
        self._claim_idle = 0.0
        self._next_touch = 0.0
        self._next_figures = 0.0

    # -- memory and room -------------------------------------------------------------------------
    def _room(self) -> int:
        return max(0, self.settings.max_queue_events - self._held)

    def _destination(self, integration: OdpIntegration) -> Destination:
        """Where events for ``integration`` wait (lock held); cheap for the usual single one."""
        last, dest = self._route
        if integration is last and dest is not None:
            return dest
        dest = self._ledger.destination(integration)
        self._route = (integration, dest)
        return dest

    def _cut_size(self) -> int:
        """Events per batch at today's mean size: ``batch_size``, fewer when events are large
        (``max_batch_bytes``). An estimate, for waking a worker: each batch is cut to fit."""
        s = self.settings
        return max(1, min(s.batch_size, s.max_batch_bytes * 4 // (5 * max(1, self._json_estimate))))

    def _place(self, claimed: ClaimedGroups) -> int:
        """Queue events read from a spool for delivery (before this run's events of their
        destination); those parked without a destination go to the current one, wait for one,
        or (ODP not integrated) are given up. Returns how many were queued or kept waiting.
        Lock held: the per-event work was done by :func:`group_claimed` before."""
        placed = 0
        for destination, items, memory in claimed:
            destination = destination or self._current
            self._held += len(items)
            self._queued_bytes += memory
            placed += len(items)
            if destination is not None:
                self._ledger.destination(destination).put_back_first(items)
            elif self._integration_known:  # parked before a datafile, and ODP is not integrated
                placed -= len(items)
                self._give_up(len(items), DiscardReason.ODP_NOT_INTEGRATED, [i[SPOOL_ID] for i in items], memory)
            else:
                self._unbound += items
        return placed

    # -- giving up -----------------------------------------------------------------------------
    def _give_up(self, count: int, reason: DiscardReason, spool_ids: list[SpoolId], memory: int,
                 host: str | None = None) -> None:
        """Events given up for good: counted, announced, and their spool rows removed (soon)."""
        if not count:
            return
        self._ledger.drop(count, reason, host)
        self._note_backlog()
        self._held -= count
        self._queued_bytes -= memory
        self._pending_acks.extend(i for i in spool_ids if i)
        self._done.notify_all()

    def _note_backlog(self) -> None:
        """Before events leave (lock held): the largest backlog since the heap was last trimmed."""
        if self._queued_bytes > self._backlog_peak:
            self._backlog_peak = self._queued_bytes

    def _abandon(self, batches: list[Batch]) -> tuple[int, list[SpoolId]]:
        """After close gave up: what a spool holds stays there (for the next start, or another
        process of the fleet); the rest is dropped (``shutdown``). Returns how many were dropped
        and the spool ids kept."""
        dropped = 0
        kept: list[SpoolId] = []
        for batch in batches:
            in_spool = [i for i in batch.spool_ids or () if i]
            kept += in_spool
            dropped += batch.count - len(in_spool)
            self._ledger.drop(batch.count - len(in_spool), DiscardReason.SHUTDOWN, batch.destination.host)
            self._queued_bytes -= batch.memory
        self._held -= dropped
        self._done.notify_all()
        return dropped, kept

    def _abandon_late(self, batches: list[Batch]) -> None:
        """Batches that come back (cut, or from their request) after close gave up: as
        :meth:`_abandon`; a shared spool's close already handed their events back to the fleet."""
        _, kept = self._abandon(batches)
        if self._link is not None and self._link.shared:
            self._held -= len(kept)
            self._released += len(kept)

    def _abandon_everything(self) -> tuple[int, list[SpoolId]]:
        """At close, after the flush: everything not in flight or being cut. Returns how many
        were dropped (``shutdown``) and the spool ids of those a spool keeps."""
        dropped = 0
        kept: list[SpoolId] = []
        for dest in self._ledger.destinations.values():
            self._queued_bytes -= waiting_memory(dest.waiting)
            for item in dest.waiting:
                if item[SPOOL_ID]:
                    kept.append(item[SPOOL_ID])
                else:
                    dropped += 1
            dest.waiting = []
        self._ledger.drop(dropped, DiscardReason.SHUTDOWN)
        self._held -= dropped
        more_dropped, more_kept = self._abandon(self._ledger.take_all())
        return dropped + more_dropped, kept + more_kept + [item[SPOOL_ID] for item in self._unbound]

    # -- log lines and notifications -------------------------------------------------------------
    def _log(self, level: str, message: str, key: str = "") -> None:
        """Log once the lock is released (lock held); lines of a non-empty ``key`` are
        rate-limited: the first at once, then a summary per interval."""
        self._logs.append((level, message, key))

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
            for level, message, key in output.logs:
                method = getattr(self.logger, level)
                if key:
                    self._log_limiter.log(method, key, message)
                else:
                    method(message)
            notifications.fire(self.notification_center, output.notes)
        finally:
            with self._lock:
                self._unemitted.discard(output.number)
                self._done.notify_all()

    def _announced_before(self, number: int) -> bool:
        """Every output taken before ``number`` was emitted (lock held)."""
        return not self._unemitted or min(self._unemitted) >= number


ClaimedGroups = list[tuple[Optional[OdpIntegration], list[Waiting], int]]
"""Events read from a spool, by destination (None: parked before a datafile said where), with
what they count against ``max_queue_bytes``."""


def group_claimed(claimed: Sequence[SpooledEvent]) -> ClaimedGroups:
    """Events read from a spool, as :meth:`ManagerState._place` queues them: built without the
    manager's lock (an application thread may want it), one destination object per host and key."""
    now_wall, now = time.time(), time.monotonic()
    groups: dict[tuple[str, str], list[Waiting]] = {}
    for row in claimed:
        item = (RECOVERED_SEQ, now - max(0.0, now_wall - row.accepted_at), row.body, row.id)
        groups.setdefault((row.host, row.api_key), []).append(item)
    return [(OdpIntegration(host, key) if host else None, items, waiting_memory(items))
            for (host, key), items in groups.items()]


def seq_of(item: Waiting) -> int:
    return item[0]
