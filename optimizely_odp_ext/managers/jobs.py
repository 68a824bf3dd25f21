"""The jobs a :class:`~optimizely_odp_ext.managers.batch.BatchEventManager` worker does without
the lock: encoding a batch, sending one, reading what a previous run left in the spool; and
giving up events older than ``max_event_age``.

Each job takes the lock only to record what it did (see :mod:`.state`).
"""

from __future__ import annotations

import time

from optimizely_odp_ext import encoding
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.managers.batching import Batch, Destination, Encoded, Waiting, seal, to_wire
from optimizely_odp_ext.managers.ledger import Completion, Fate
from optimizely_odp_ext.managers.state import ManagerState, encoded_memory, group_claimed, spool_ids
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.settings import seconds
from optimizely_odp_ext.transport import Outcome, OutcomeKind

EXPIRY_CHECK_INTERVAL = 1.0


def resolves(outcome: Outcome, count: int) -> bool:
    """Whether the events of a batch with this outcome are done for good (delivered or refused)."""
    kind = outcome.kind
    return kind is OutcomeKind.DELIVERED or kind is OutcomeKind.FAILED or (
        kind is OutcomeKind.REJECTED and count <= 1)


class DeliveryJobs(ManagerState):
    """Encoding and sending batches (see the module docstring)."""

    def _seal_batch(self, dest: Destination, token: int, items: list[Waiting]) -> None:
        """Encode waiting events into batches (no lock), then make them ready."""
        memory_of_encoded = encoded_memory(items)
        failed: list[Waiting] = []
        started = time.monotonic()
        try:
            batches = self._fit(seal(dest.integration, items, self._json_estimate))
        except (TypeError, ValueError, OverflowError, RecursionError):
            batches, failed = self._seal_one_by_one(dest.integration, items)
        took = time.monotonic() - started
        with self._lock:
            self._encode_time += (took - self._encode_time) * 0.25
            del self._ledger.sealing[token]
            dest.sealing -= 1
            self._sealing_events -= len(items)
            self._forget_objects(items)
            self._encoded_bytes -= memory_of_encoded
            events = sum(batch.count for batch in batches)
            if events:
                size = sum(len(batch.body) for batch in batches) // events
                self._json_estimate += (size - self._json_estimate) // 8
            if failed:
                self._log("error", f"ODP: {len(failed)} events could not be encoded and are dropped.")
                self._give_up(len(failed), DiscardReason.INTERNAL_ERROR, spool_ids(failed), 0)
            for batch in batches:
                self._encoded_bytes += batch.memory
            if self._finished:
                self._abandon_late(batches)
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
                good.append(item if isinstance(item, Encoded) else Encoded(
                    item[0], item[1], encoding.encode(to_wire(item)), 0))
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
        if batch.spool_ids and self._link is not None and resolves(outcome, batch.count):
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
            self._abandon_late([batch])
        elif done.fate is Fate.SPLIT and halves is not None:
            self._encoded_bytes += halves[0].memory + halves[1].memory - batch.memory
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
