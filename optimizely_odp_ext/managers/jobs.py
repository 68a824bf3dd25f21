"""The jobs a :class:`~optimizely_odp_ext.managers.batch.BatchEventManager` worker does without
the lock: cutting a batch, sending one, reading what a previous run left in the spool; and
giving up events older than ``max_event_age``.

Each job takes the lock only to record what it did (see :mod:`.state`).
"""

from __future__ import annotations

import sys
import time

from optimizely_odp_ext.integration import mask_key
from optimizely_odp_ext.managers.batching import Batch, Destination, Waiting, seal, waiting_memory
from optimizely_odp_ext.managers.ledger import Completion, Fate
from optimizely_odp_ext.managers.state import ManagerState, group_claimed
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.settings import seconds
from optimizely_odp_ext.transport import Outcome, OutcomeKind

EXPIRY_CHECK_INTERVAL = 1.0
GIL_WAITS_PER_REQUEST = 3
"""Turns of the GIL a request waits for when the process is busy: its thread gives the GIL up to
check the connection, to send and to wait for the answer, and each time gets it back only when
a busy thread's turn ends (``sys.getswitchinterval()``, 5 ms by default). Measured (one thread
sending as fast as calls return, one worker, the local collector answering at once, in a
process of its own): requests took 12-17 ms, the process using a whole core meanwhile."""


def waited_on_odp(took: float, busy: float) -> float:
    """How much of a request that took ``took`` seconds was spent waiting for ODP rather than for
    the GIL, when the process used ``busy`` cores meanwhile (its CPU time over the request's
    wall time; above 1, threads ran without the GIL)."""
    return max(0.0, took - GIL_WAITS_PER_REQUEST * sys.getswitchinterval() * min(1.0, busy))


def resolves(outcome: Outcome, count: int) -> bool:
    """Whether the events of a batch with this outcome are done for good (delivered or refused)."""
    kind = outcome.kind
    return kind is OutcomeKind.DELIVERED or kind is OutcomeKind.FAILED or (
        kind is OutcomeKind.REJECTED and count <= 1)


class DeliveryJobs(ManagerState):
    """Cutting and sending batches (see the module docstring)."""

    def _seal_batch(self, dest: Destination, token: int, items: list[Waiting]) -> None:
        """Make a batch of waiting events (no lock), then make it ready (its body is joined when it
        is sent)."""
        started = time.monotonic()
        batch = seal(dest.integration, items)
        took = time.monotonic() - started
        with self._lock:
            self._encode_time += (took - self._encode_time) * 0.25
            del self._ledger.sealing[token]
            dest.sealing -= 1
            self._sealing_events -= len(items)
            self._queued_bytes += batch.memory - waiting_memory(items)
            self._json_estimate += (batch.size // batch.count - self._json_estimate) // 8
            self._cut_events = self._cut_size()
            if self._finished:
                self._abandon_late([batch])
            else:
                current = self._current
                if dest.unauthorized and current is not None and current != dest.integration:
                    self._ledger.move(current, dest, [batch], self._log)
                else:
                    dest.ready.append(batch)
            output = self._take_output()
        self._emit(output)

    def _send_batch(self, batch: Batch) -> None:
        """One POST (no lock), then its outcome."""
        batch.attempts += 1
        started, cpu_started = time.monotonic(), time.process_time()
        outcome = self._transport.send(batch.destination, batch.body())
        took = time.monotonic() - started
        busy = (time.process_time() - cpu_started) / took if took > 0 else 0.0
        halves = None
        if outcome.kind is OutcomeKind.REJECTED and batch.count > 1 and not self._finished:
            halves = batch.split()
        if batch.spool_ids and self._link is not None and resolves(outcome, batch.count):
            self._link.ack(batch.spool_ids)  # before flush() can see these events resolved
        with self._lock:
            self._odp_wait += (waited_on_odp(took, busy) - self._odp_wait) * 0.25
            done = self._ledger.complete(batch, outcome, self._log, keep=not self._finished,
                                         new_key=self._current, hurry=self._flushing > 0 or self._closed,
                                         halves=halves)
            self._after(batch, outcome, done, halves)
            output = self._take_output()
        self._emit(output)

    def _after(self, batch: Batch, outcome: Outcome, done: Completion, halves: tuple[Batch, Batch] | None) -> None:
        """This manager's part of an outcome (lock held): memory, spool and the retry warning."""
        if done.resolved:
            self._note_backlog()
            self._held -= batch.count
            self._queued_bytes -= batch.memory
            self._done.notify_all()
        elif done.fate is Fate.ABANDONED:
            self._abandon_late([batch])
        elif done.fate is Fate.SPLIT and halves is not None:
            self._queued_bytes += halves[0].memory + halves[1].memory - batch.memory
        elif done.fate is Fate.MOVE and self._current is not None:
            self._ledger.move(self._current, done.dest, [batch], self._log)
        elif done.fate is Fate.RETRY:
            message = (f"ODP request failed ({outcome.detail}); {batch.count} events kept, "
                       f"retry #{done.dest.failures} in {done.delay:.2f}s.")
            if done.dest.unauthorized:
                message += f" The key {mask_key(batch.destination.api_key)} is refused: waiting for a new one."
            self._log("warning", message, "failed requests kept for a retry")
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
        groups = group_claimed(claimed)
        with self._lock:
            self._recovered += len(claimed)
            self._place(groups)
            self._spool_backlog = len(claimed) >= limit
            self._claiming = False
            if claimed:
                self._log("info", f"ODP: {len(claimed)} events from the spool of a previous run will be delivered.")
            output = self._take_output()
        self._emit(output)

    def _expire(self, now: float) -> None:
        self._next_expiry = now + EXPIRY_CHECK_INTERVAL
        cutoff = now - self.settings.max_event_age
        for dest in self._ledger.destinations.values():
            expired = dest.take_expired(cutoff)
            if expired:
                count = sum(batch.count for batch in expired)
                self._log("error", f"ODP gave up {count} events older than {seconds(self.settings.max_event_age)}s "
                                   f"(destination {dest.integration.host}).", "notices of events given up as too old")
                self._give_up(count, DiscardReason.EXPIRED, [i for b in expired for i in b.spool_ids or ()],
                              sum(batch.memory for batch in expired), dest.integration.host)
