"""A :class:`~optimizely_odp_ext.managers.batch.BatchEventManager` in a fleet: a shared spool
(a Redis stream) between the processes that accept events and ODP.

With a shared spool, the process that accepts an event does not keep it: a worker appends it
to the stream (a group commit: whatever accumulated while the last append was under way or
within :data:`STORE_LINGER` of the oldest, up to :data:`STORE_CHUNK` events), and every
process with ``deliver`` on claims events from the stream (its own, other processes', those a
dead process left) and delivers them like any other, acknowledging each in the stream once
ODP did.

- **The durability window**: an accepted event lives only in this process's memory until its
  append returns (a round trip, after up to :data:`STORE_LINGER` for others to join it). If
  the process dies in that window, the event is lost; once appended, it survives the loss of
  this host (``benchmarks/redis_fleet.py`` measures the window: milliseconds at 5,000 events/s).
- **The store down or slow**: ``send_odp_event`` still returns at once; events wait in
  memory within ``max_queue_events`` and ``max_queue_bytes`` (beyond: ``queueFull``), and the
  append is retried with backoff (at most :data:`STORE_RETRY_MAX` apart). The spool's state
  changes are logged once each.
- **flush()**: waits until every event accepted before it is appended; with ``deliver`` on,
  also until the fleet resolved everything up to the last one (which may include waiting
  ``claim_after`` for the events of a process that died).
- **close()**: flushes, then hands the claimed events it did not deliver back to the fleet
  (any member may take them at once); events it could not append are dropped (``shutdown``).
"""

from __future__ import annotations

import functools
import time
from typing import Callable

from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers.batching import ACCEPTED_AT, BODY, SPOOL_ID, Waiting, waiting_memory
from optimizely_odp_ext.managers.state import ManagerState, group_claimed
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.spool import SpoolId, SpoolRecord

STORE_CHUNK = 100
"""Events appended per call: larger groups hold the GIL longer while the Redis client encodes."""
STORE_LINGER = 0.002
"""Seconds the oldest event not yet appended may wait for others to join its append (unless
:data:`STORE_CHUNK` are waiting, or a flush or close is under way): at thousands of events a
second, appends of a few events each would cost a round trip and the Redis client's CPU per
event or two, and that CPU is the GIL an application thread waits for."""
STORE_RETRY_MAX = 5.0
"""The longest wait between two attempts to append while the store fails, in seconds."""
CLAIM_CHUNK = 500
CLAIM_AHEAD_BATCHES = 4
"""A member holds at most this many rounds of ``max_in_flight`` batches of claimed events."""
CLAIM_POLL_MIN = 0.02
CLAIM_POLL_MAX = 0.5
"""How often an idle deliverer asks the stream for new events: soon after it found some, then
less and less often while it finds none (the latency from append to delivery is at most this)."""
FIGURES_EVERY = 5.0
"""Seconds between two readings of the store's own figures for ``odp_stats()["spool"]``."""
FLUSH_POLL = 0.05

Job = Callable[[], None]


class FleetJobs(ManagerState):
    """Appending to, claiming from, and keeping claims in, a shared spool (see the module docstring)."""

    @property
    def _fleet(self) -> bool:
        return self._link is not None and self._link.shared

    def _store_job(self, now: float) -> Job | None:
        """Appending accepted events, if due: before anything else, it closes the window in which
        they live only in memory (lock held)."""
        if self._to_store and not self._store_in_progress and now >= self._store_due():
            items = self._to_store[:STORE_CHUNK]
            del self._to_store[:STORE_CHUNK]
            self._store_in_progress = items
            return functools.partial(self._store, items)
        return None

    def _store_due(self) -> float:
        """When the waiting events' append is due (lock held; something is waiting): after a
        failed one's backoff, and once the oldest lingered :data:`STORE_LINGER` (at once when a
        whole chunk waits, or a flush or close wants them stored)."""
        if len(self._to_store) >= STORE_CHUNK or self._flushing or self._stopping:
            return self._store_not_before
        accepted_at: float = self._to_store[0][1][1]
        return max(self._store_not_before, accepted_at + STORE_LINGER)

    def _claim_job(self, now: float) -> Job | None:
        """Keeping claims, reading the store's figures, or claiming more, if due (lock held)."""
        if not self.settings.deliver or self._stopping:
            return None
        if now >= self._next_touch:
            self._next_touch = now + self._link_fleet_touch_interval()
            ids = self._claimed_ids()
            if ids:
                return functools.partial(self._touch, ids)
        if now >= self._next_figures:
            self._next_figures = now + FIGURES_EVERY
            assert self._link is not None
            return self._link.refresh_figures
        room = self._claim_room()
        if not self._claiming and now >= self._next_claim and room:
            self._claiming = True
            return functools.partial(self._claim_from_fleet, min(CLAIM_CHUNK, room))
        return None

    def _claim_room(self) -> int:
        """How many more events this member may claim: within the queue's limits, and no more
        than :data:`CLAIM_AHEAD_BATCHES` rounds of requests ahead, so that during an ODP outage
        one member does not hoard what others (or a member starting later) could deliver, and
        keeping its claims stays cheap (lock held)."""
        s = self.settings
        claimed_held = self._held - len(self._to_store) - len(self._store_in_progress)
        ahead = CLAIM_AHEAD_BATCHES * s.max_in_flight * s.batch_size
        return min(self._room(), max(0, ahead - claimed_held))

    def _can_claim(self) -> bool:
        """A deliverer here could claim more now (lock held)."""
        return (self.settings.deliver and not self._claiming and not self._stopping
                and time.monotonic() >= self._next_claim and self._claim_room() > 0)

    def _fleet_due(self) -> list[float]:
        """When the fleet jobs are next due, for an idle worker's wait (lock held)."""
        times = [self._store_due()] if self._to_store and not self._store_in_progress else []
        if self.settings.deliver:
            times += [self._next_touch, self._next_figures]
            if self._claim_room() and not self._claiming:  # a claim under way notifies when it ends
                times.append(self._next_claim)
        return times

    def _link_fleet_touch_interval(self) -> float:
        assert self._link is not None
        return self._link.fleet.touch_interval

    # -- appending ---------------------------------------------------------------------------
    def _store(self, items: list[tuple[OdpIntegration, Waiting]]) -> None:
        """Append accepted events to the shared spool (no lock); kept for another try when the
        store fails, so a retry stores the same bytes (same idempotence ids)."""
        assert self._link is not None
        cpu_started = time.thread_time()
        offset = time.time() - time.monotonic()
        records = [SpoolRecord(integration.host, integration.api_key, item[BODY], item[ACCEPTED_AT] + offset)
                   for integration, item in items]
        ids = self._link.append(records) if records else []
        work = time.thread_time() - cpu_started
        with self._lock:
            if ids is not None:  # a failed append's time is its timeout, not work
                self._fleet_work += (work / len(items) - self._fleet_work) * 0.25
            self._store_in_progress = []
            if ids is None:
                self._to_store[:0] = items
                self._store_failures += 1
                wait = min(STORE_RETRY_MAX, 0.05 * 2 ** min(self._store_failures, 10))
                self._store_not_before = time.monotonic() + (min(wait, 0.2) if self._flushing else wait)
            else:
                self._store_failures = 0
                self._queued_bytes -= waiting_memory([item for _, item in items])
                self._held -= len(items)
                self._spooled += len(items)
                if ids:
                    self._last_stored_id = ids[-1]
                # New entries: a deliverer here claims them soon (not after each append: a claim
                # per append would cost a round trip for a few events).
                self._next_claim = min(self._next_claim, time.monotonic() + CLAIM_POLL_MIN)
            self._done.notify_all()
            self._work.notify()
            output = self._take_output()
        self._emit(output)

    def _stored_before(self, target: int) -> bool:
        """Every event accepted before ``target`` is appended (lock held)."""
        pending = [items[0][1][0] for items in (self._to_store, self._store_in_progress) if items]
        return not pending or min(pending) >= target

    # -- claiming and keeping claims -----------------------------------------------------------
    def _claim_from_fleet(self, limit: int) -> None:
        """Take events to deliver from the shared spool (no lock), then queue them."""
        assert self._link is not None
        cpu_started = time.thread_time()
        try:
            claimed = self._link.claim(limit)
        except BaseException:
            with self._lock:
                self._claiming = False
            raise
        groups = group_claimed(claimed)
        work = time.thread_time() - cpu_started
        with self._lock:
            # The claim ends with its events queued, in one step: close() waits for a claim under
            # way and hands back what it placed; in between they would be neither.
            self._claiming = False
            now = time.monotonic()
            if claimed:
                self._fleet_work += (work / len(claimed) - self._fleet_work) * 0.25
            self._claimed += len(claimed)
            self._place(groups)
            if len(claimed) >= limit:
                self._claim_idle = 0.0
            elif claimed:
                self._claim_idle = CLAIM_POLL_MIN
            else:
                self._claim_idle = min(CLAIM_POLL_MAX, max(CLAIM_POLL_MIN, self._claim_idle * 2))
            self._next_claim = now + self._claim_idle
            self._work.notify()
            output = self._take_output()
        self._emit(output)

    def _claimed_ids(self) -> list[SpoolId]:
        """The ids of the claimed events this process holds, waiting or in flight (lock held)."""
        ids: list[SpoolId] = [item[SPOOL_ID] for item in self._unbound]
        for dest in self._ledger.destinations.values():
            ids += [item[SPOOL_ID] for item in dest.waiting if item[SPOOL_ID]]
            ids += [i for batch in dest.ready for i in batch.spool_ids or () if i]
        ids += [i for batch in self._ledger.in_flight.values() for i in batch.spool_ids or () if i]
        return ids

    def _touch(self, ids: list[SpoolId]) -> None:
        """Keep claimed events ours while we deliver them (no lock)."""
        assert self._link is not None
        lost = self._link.touch(ids)
        if lost:
            with self._lock:
                self._lost_claims += len(lost)
                self._log("warning", f"ODP: {len(lost)} claimed events were taken over by another process of "
                                     "the fleet (this one stalled); a delivery from both is a duplicate ODP "
                                     "recognises.")
                output = self._take_output()
            self._emit(output)

    # -- flush and close ----------------------------------------------------------------------
    def _flush_fleet(self, target: int, deadline: float) -> bool:
        """flush() with a shared spool (lock held; released while the store is asked)."""
        self._store_not_before = 0.0
        self._work.notify_all()
        while not self._stored_before(target):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._done.wait(remaining)
        last = self._last_stored_id
        if not self.settings.deliver or last is None:
            return True
        assert self._link is not None
        link = self._link
        while True:
            self._next_claim = 0.0
            self._ledger.hurry(time.monotonic())
            self._work.notify_all()
            self._lock.release()
            try:
                done = link.delivered_up_to(last)
            finally:
                self._lock.acquire()
            if done:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._done.wait(min(remaining, FLUSH_POLL))

    def _give_back(self, kept: list[SpoolId]) -> int:
        """At close (lock released): hand claimed, undelivered events back to the fleet, and drop
        those never appended. Returns how many were dropped."""
        assert self._link is not None
        if kept:
            self._link.release(kept)
        with self._lock:
            unstored = self._to_store
            self._to_store = []
            self._held -= len(kept) + len(unstored)
            self._released += len(kept)
            self._queued_bytes -= waiting_memory([item for _, item in unstored])
            self._ledger.drop(len(unstored), DiscardReason.SHUTDOWN)
        return len(unstored)

    def _fleet_stats(self) -> dict[str, int]:
        """The fleet's counters for ``stats()`` (lock held)."""
        return {"spooled": self._spooled, "claimed": self._claimed, "released": self._released,
                "lost_claims": self._lost_claims, "waiting_to_store": len(self._to_store)
                + len(self._store_in_progress)}

