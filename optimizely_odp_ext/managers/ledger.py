"""What both event managers keep about delivery, and the retry rules applied to each outcome.

Pure bookkeeping: no threads, no locks and no I/O of its own (it logs through the logger it
is handed). Not thread-safe: the manager's lock guards every call, and notifications are
only collected here, for the manager to fire once it released its lock.
"""

from __future__ import annotations

import time
from collections import Counter
from enum import Enum
from typing import Any, Callable, NamedTuple

from optimizely_odp_ext import notifications
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.managers.batching import Batch, Destination
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
    ABANDONED = "abandoned"
    """Not done, and ``keep=False``: untouched and not counted, for the manager to drop (shutdown)
    or leave in its spool."""


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


KEEP_DESTINATIONS = 4
"""Idle destinations are kept while there are no more than this many (a key rotation leaves a few)."""

Log = Callable[[str, str, str], None]
"""``log(level, message, key)``: a line to write once the manager's lock is released; lines of a
non-empty ``key`` are rate-limited (:class:`~optimizely_odp_ext.logs.LogRateLimiter`)."""


class DeliveryLedger:
    """Destinations, batches in flight, counters and notifications of one manager.

    Not thread-safe: the manager's lock guards it. No method blocks.
    """

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.destinations: dict[OdpIntegration, Destination] = {}
        self.in_flight: dict[int, Batch] = {}
        self.in_flight_events = 0
        self.sealing: dict[int, int] = {}
        """Batches being cut: a token -> the acceptance order of their first event."""
        self.counts: Counter[str] = Counter()
        """``requests``, ``batches_sent``, ``delivered`` and ``retries``."""
        self.dropped: Counter[str] = Counter()
        """Events accepted and then given up, by :class:`DiscardReason` value."""
        self.by_host: dict[str, Counter[str]] = {}
        """Per ODP host (never the key): ``delivered``, ``dropped_total``, ``requests``, ``retries``."""
        self.notes: list[notifications.Note] = []

    def destination(self, integration: OdpIntegration) -> Destination:
        dest = self.destinations.get(integration)
        if dest is None:
            dest = self.destinations[integration] = Destination(integration)
        return dest

    def forget_if_idle(self, dest: Destination) -> bool:
        """Drop a destination with nothing left to do and no failure to remember, when there are
        several (one that keeps coming back is kept); True if it was dropped."""
        if (len(self.destinations) > KEEP_DESTINATIONS and dest.is_idle() and dest.failures == 0
                and self.destinations.get(dest.integration) is dest):
            del self.destinations[dest.integration]
            return True
        return False

    def take_ready(self, dest: Destination, now: float) -> Batch | None:
        """The next ready batch of ``dest`` if it may send now, counted in flight."""
        if not dest.ready or not dest.can_send(now):
            return None
        batch = dest.ready.popleft()
        dest.in_flight += 1
        self.in_flight[batch.id] = batch
        self.in_flight_events += batch.count
        return batch

    def complete(self, batch: Batch, outcome: Outcome, log: Log, *, keep: bool = True,
                 new_key: OdpIntegration | None = None, hurry: bool = False,
                 halves: tuple[Batch, Batch] | None = None) -> Completion:
        """Apply the retry rules of :mod:`optimizely_odp_ext.retry` to the outcome of ``batch``.

        ``keep=False``: the manager gave up on what is left, so what would be split or retried is
        returned as :attr:`Fate.ABANDONED` instead. ``new_key``: the key in force; a 401/403 for
        another key returns :attr:`Fate.MOVE` without touching the destination's retry state. The
        manager forgets the events of a :attr:`~Completion.resolved` batch and logs a retry its own
        way. ``hurry``: a flush or close is waiting, so a retry waits at most
        :data:`HURRIED_BACKOFF` (unless the server asked for longer with ``Retry-After``).
        ``halves``: ``batch.split()``, made by the caller without the lock, for a refused batch.
        """
        count, kind = batch.count, outcome.kind
        self.in_flight.pop(batch.id, None)
        self.in_flight_events -= count
        self.counts["requests"] += 1
        host = self._host(batch.destination.host)
        host["requests"] += 1
        dest = self.destination(batch.destination)
        dest.in_flight -= 1
        if kind is OutcomeKind.DELIVERED:
            dest.failures, dest.not_before, dest.unauthorized = 0, 0.0, False
            self.counts["batches_sent"] += 1
            self.counts["delivered"] += count
            host["delivered"] += count
            self.note(notifications.ODP_BATCH_DELIVERED, batch.destination.host, count, outcome.status)
            return Completion(Fate.DELIVERED, dest)
        if kind is OutcomeKind.FAILED or (kind is OutcomeKind.REJECTED and count <= 1):
            log("error", f"ODP refused {count} event(s) for good ({outcome.detail}); they are dropped.",
                "requests refused by ODP for good")
            self.drop(count, DiscardReason.REJECTED, batch.destination.host)
            return Completion(Fate.DROPPED, dest)
        if not keep:
            return Completion(Fate.ABANDONED, dest)
        if kind is OutcomeKind.REJECTED:
            log("debug", f"ODP refused a batch of {count} ({outcome.detail}); splitting it.", "")
            dest.ready.extendleft(reversed(halves or batch.split()))
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
        dest.ready.appendleft(batch)
        self.counts["retries"] += 1
        host["retries"] += 1
        self.note(notifications.ODP_BATCH_FAILED, batch.destination.host, count, outcome.status, delay)
        return Completion(Fate.RETRY, dest, delay)

    def drop(self, count: int, reason: DiscardReason, host: str | None = None) -> None:
        """Count ``count`` accepted events as given up for ``reason`` (and against ``host``, when
        known) and note it (nothing when 0)."""
        if count:
            self.dropped[reason.value] += count
            if host is not None:
                self._host(host)["dropped_total"] += count
            self.note(notifications.ODP_EVENTS_DROPPED, reason.value, count)

    def _host(self, host: str) -> Counter[str]:
        figures = self.by_host.get(host)
        if figures is None:
            figures = self.by_host[host] = Counter()
        return figures

    def destination_stats(self) -> dict[str, dict[str, int]]:
        """``stats()["destinations"]``: per ODP host, what was delivered, given up, requested and
        retried, and what waits (``queued``) or is under way (``in_flight``) now."""
        figures = {host: {"delivered": c["delivered"], "dropped_total": c["dropped_total"], "requests": c["requests"],
                          "retries": c["retries"], "queued": 0, "in_flight": 0} for host, c in self.by_host.items()}
        empty = {"delivered": 0, "dropped_total": 0, "requests": 0, "retries": 0, "queued": 0, "in_flight": 0}
        for dest in self.destinations.values():
            waiting = len(dest.waiting) + sum(batch.count for batch in dest.ready)
            if waiting:
                figures.setdefault(dest.integration.host, dict(empty))["queued"] += waiting
        for batch in self.in_flight.values():
            figures.setdefault(batch.destination.host, dict(empty))["in_flight"] += batch.count
        return figures

    def note(self, kind: str, *args: Any) -> None:
        self.notes.append((kind, args))

    def take_notes(self) -> list[notifications.Note]:
        """The notifications collected so far, to fire once the manager's lock is released."""
        notes, self.notes = self.notes, []
        return notes

    def move_refused(self, integration: OdpIntegration, log: Log) -> None:
        """Events waiting behind a refused key (401/403) other than ``integration`` move to it."""
        for old, dest in list(self.destinations.items()):
            if dest.unauthorized and old != integration and (dest.ready or dest.waiting):
                batches = list(dest.ready)
                dest.ready.clear()
                self.move(integration, dest, batches, log)

    def move(self, integration: OdpIntegration, source: Destination, batches: list[Batch], log: Log) -> None:
        """Re-home batches (and the waiting events of ``source``) whose key was refused: a body
        does not name the key, so a batch only changes destination. They go first, in order."""
        target = self.destination(integration)
        for batch in batches:
            batch.destination = integration
        moved = sum(batch.count for batch in batches)
        if source is not target and source.waiting:
            moved += len(source.waiting)
            target.waiting = sorted(target.waiting + source.waiting, key=lambda item: item[0])
            source.waiting = []
        target.ready.extendleft(reversed(batches))
        log("info", f"ODP: {moved} events refused with an old key move to key {mask_key(integration.api_key)}.", "")

    def hurry(self, now: float) -> None:
        """A flush or close is waiting: every destination may be tried at once, unless the
        server itself asked for a later time (``Retry-After``)."""
        for dest in self.destinations.values():
            dest.not_before = max(min(dest.not_before, now), dest.server_wait_until)

    def oldest_unresolved(self) -> int | None:
        """The lowest acceptance order still waiting, being cut or in flight (None: nothing is)."""
        seqs = [batch.min_seq for batch in self.in_flight.values()]
        seqs += self.sealing.values()
        seqs += [s for s in (d.min_seq() for d in self.destinations.values()) if s is not None]
        return min(seqs) if seqs else None

    def take_all(self) -> list[Batch]:
        """Remove and return every ready batch of every destination (not those in flight)."""
        left = [batch for dest in self.destinations.values() for batch in dest.ready]
        for dest in self.destinations.values():
            dest.ready.clear()
        return left

    def stats(self) -> dict[str, Any]:
        """The delivery counters as ``stats()`` reports them."""
        dropped = self.dropped
        return {
            "delivered": self.counts["delivered"],
            "dropped": dict(dropped),
            "dropped_total": sum(dropped.values()),
            "in_flight": self.in_flight_events,
            "requests": self.counts["requests"],
            "batches_sent": self.counts["batches_sent"],
            "retries": self.counts["retries"],
            "destinations": self.destination_stats(),
        }
