"""What both event managers keep about delivery, and the retry rules applied to each outcome.

Pure bookkeeping: no threads, no locks and no I/O of its own (it logs through the logger it
is handed). Not thread-safe: the manager's lock guards every call, and notifications are
only collected here, for the manager to fire once it released its lock.
"""

from __future__ import annotations

import time
from collections import Counter
from enum import Enum
from typing import Any, NamedTuple

from optimizely_odp_ext import notifications
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.managers.batching import Batch, Destination, Item
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.retry import HURRIED_BACKOFF, backoff_delay
from optimizely_odp_ext.settings import ManagerSettings
from optimizely_odp_ext.transport import Outcome, OutcomeKind


class Fate(Enum):
    """What became of a batch when its request ended."""

    DELIVERED = "delivered"
    DROPPED = "dropped"
    """Refused for good, or (``keep=False``) given up at shutdown."""
    SPLIT = "split"
    """Refused: its halves wait at the front of the destination's ready batches."""
    RETRY = "retry"
    """Kept at the front of the destination's ready batches; the destination backs off."""
    MOVE = "move"
    """Refused key (401/403) that was already replaced: untouched, for the manager to re-home."""


class Completion(NamedTuple):
    """What :meth:`DeliveryLedger.complete` did with a batch."""

    fate: Fate
    dest: Destination
    delay: float = 0.0
    """Seconds until the retry (fate RETRY)."""

    @property
    def resolved(self) -> bool:
        """The events are delivered or dropped for good: the manager forgets them."""
        return self.fate is Fate.DELIVERED or self.fate is Fate.DROPPED


class DeliveryLedger:
    """Destinations, batches in flight, counters and notifications of one manager.

    Not thread-safe: the manager's lock guards it. No method blocks.
    """

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.destinations: dict[OdpIntegration, Destination] = {}
        self.in_flight: dict[int, Batch] = {}
        self.in_flight_events = 0
        self.counts: Counter[str] = Counter()
        """``requests``, ``batches_sent``, ``delivered`` and ``retried``."""
        self.dropped: Counter[str] = Counter()
        """Events dropped, by :class:`DiscardReason` value."""
        self.notes: list[notifications.Note] = []

    def destination(self, integration: OdpIntegration) -> Destination:
        dest = self.destinations.get(integration)
        if dest is None:
            dest = self.destinations[integration] = Destination(integration)
        return dest

    def take_batch(self, dest: Destination, now: float, flush_interval: float, flushing: bool) -> Batch | None:
        """The next batch of ``dest`` if it may send now and one is due (see
        :meth:`Destination.next_batch`), counted in flight."""
        if not dest.can_send(now):
            return None
        s = self.settings
        batch = dest.next_batch(now, flush_interval, s.batch_size, s.max_batch_bytes, flushing)
        if batch is not None:
            dest.in_flight += 1
            self.in_flight[batch.id] = batch
            self.in_flight_events += len(batch.items)
        return batch

    def complete(self, batch: Batch, outcome: Outcome, logger: Any, *, keep: bool = True,
                 new_key: OdpIntegration | None = None, hurry: bool = False) -> Completion:
        """Apply the retry rules of :mod:`optimizely_odp_ext.retry` to the outcome of ``batch``.

        ``keep=False``: the manager gave up on what is left, so what would be split or retried is
        dropped (``shutdown``) instead. ``new_key``: the key in force; a 401/403 for another key
        returns :attr:`Fate.MOVE` without touching the destination's retry state. The manager
        forgets the events of a :attr:`~Completion.resolved` batch and logs a retry its own way.
        ``hurry``: a flush or close is waiting, so a retry waits at most :data:`HURRIED_BACKOFF`
        (unless the server asked for longer with ``Retry-After``).
        """
        count, kind = len(batch.items), outcome.kind
        self.in_flight.pop(batch.id, None)
        self.in_flight_events -= count
        self.counts["requests"] += 1
        dest = self.destination(batch.destination)
        dest.in_flight -= 1
        if kind is OutcomeKind.DELIVERED:
            dest.failures, dest.not_before, dest.unauthorized = 0, 0.0, False
            self.counts["batches_sent"] += 1
            self.counts["delivered"] += count
            self.note(notifications.ODP_BATCH_DELIVERED, batch.destination.host, count, outcome.status)
            return Completion(Fate.DELIVERED, dest)
        if kind is OutcomeKind.FAILED or (kind is OutcomeKind.REJECTED and count <= 1):
            logger.error(f"ODP refused {count} event(s) for good ({outcome.detail}); they are dropped.")
            self.drop(batch.items, DiscardReason.REJECTED)
            return Completion(Fate.DROPPED, dest)
        if not keep:
            self.drop(batch.items, DiscardReason.SHUTDOWN)
            return Completion(Fate.DROPPED, dest)
        if kind is OutcomeKind.REJECTED:
            logger.debug(f"ODP refused a batch of {count} ({outcome.detail}); splitting it.")
            dest.ready_batches.extendleft(reversed(batch.split()))
            return Completion(Fate.SPLIT, dest)
        if kind is OutcomeKind.UNAUTHORIZED and new_key is not None and new_key != batch.destination:
            return Completion(Fate.MOVE, dest)
        # RETRY or UNAUTHORIZED: keep the events, back off this destination.
        dest.failures += 1
        dest.unauthorized = kind is OutcomeKind.UNAUTHORIZED
        s = self.settings
        delay = backoff_delay(dest.failures, s.retry_initial_backoff, s.retry_max_backoff, outcome.retry_after)
        if hurry and outcome.retry_after is None:
            delay = min(delay, HURRIED_BACKOFF)
        now = time.monotonic()
        dest.not_before = now + delay
        dest.server_wait_until = now + delay if outcome.retry_after is not None else 0.0
        dest.ready_batches.appendleft(batch)
        self.counts["retried"] += count
        self.note(notifications.ODP_BATCH_FAILED, batch.destination.host, count, outcome.status, delay)
        return Completion(Fate.RETRY, dest, delay)

    def drop(self, items: list[Item], reason: DiscardReason) -> None:
        """Count ``items`` as dropped for ``reason`` and note it (nothing when empty); the
        manager forgets them."""
        if items:
            self.dropped[reason.value] += len(items)
            self.note(notifications.ODP_EVENTS_DROPPED, reason.value, len(items))

    def note(self, kind: str, *args: Any) -> None:
        self.notes.append((kind, args))

    def take_notes(self) -> list[notifications.Note]:
        """The notifications collected so far, to fire once the manager's lock is released."""
        notes, self.notes = self.notes, []
        return notes

    def take_all(self) -> list[Item]:
        """Remove and return every event waiting at a destination (not those in flight)."""
        return [item for dest in self.destinations.values() for item in dest.take_all()]

    def move_refused(self, integration: OdpIntegration, logger: Any) -> None:
        """Events waiting behind a refused key (401/403) other than ``integration`` move to it."""
        for old, dest in list(self.destinations.items()):
            if dest.unauthorized and old != integration and dest.has_work():
                self.move(integration, dest.take_all(), logger)

    def move(self, integration: OdpIntegration, items: list[Item], logger: Any) -> None:
        """Re-home events whose key was refused. They go as ready batches, so the new
        destination's pending queue stays in acceptance order (flush() relies on it)."""
        target = self.destination(integration)
        items = sorted(items)
        size = self.settings.batch_size
        for start in range(0, len(items), size):
            target.ready_batches.append(Batch(integration, items[start:start + size]))
        logger.info(f"ODP: {len(items)} events refused with an old key move to key "
                    f"{mask_key(integration.api_key)}.")

    def hurry(self, now: float) -> None:
        """A flush or close is waiting: every destination may be tried at once, unless the
        server itself asked for a later time (``Retry-After``)."""
        for dest in self.destinations.values():
            dest.not_before = max(min(dest.not_before, now), dest.server_wait_until)

    def oldest_unresolved(self) -> int | None:
        """The lowest ``seq`` still in flight or waiting (None: nothing is), for flush()."""
        seqs = [batch.min_seq for batch in self.in_flight.values()]
        seqs += [s for s in (d.min_seq() for d in self.destinations.values()) if s is not None]
        return min(seqs) if seqs else None

    def stats(self, *, accepted: int, queued: int, **more: int) -> dict[str, Any]:
        """The counters as ``stats()`` reports them, with the manager's own ``accepted``,
        ``queued`` and ``more`` (after ``queued``)."""
        dropped = self.dropped
        return {
            "accepted": accepted,
            "delivered": self.counts["delivered"],
            "retried": self.counts["retried"],
            "dropped": dict(dropped),
            "dropped_total": sum(dropped.values()),
            "queued": queued,
            **more,
            "in_flight": self.in_flight_events,
            "batches_sent": self.counts["batches_sent"],
            "requests": self.counts["requests"],
        }
