"""Where accepted events wait, per destination, and how they become batches.

Pure data structures, no threads and no I/O: the event managers drive them, through their
:class:`~optimizely_odp_ext.managers.ledger.DeliveryLedger`, under their lock.

An event is encoded when it is accepted, on the caller's thread, and waits at its destination as
its JSON bytes until its batch is cut; a batch keeps those bytes, joined into one body only while
its request is sent. Memory is then close to the bytes sent (one copy of each event, however long
it waits), and a retried batch is sent byte for byte (same idempotence ids) every time.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections import deque
from collections.abc import Sequence
from typing import Final

from optimizely_odp_ext import encoding
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.spool.base import SpoolId

BATCH_OVERHEAD = 256
"""Bytes a batch takes beyond its events' bytes (the objects that hold it), for ``max_queue_bytes``."""
PART_OVERHEAD = 96
"""Bytes each event of a batch takes beyond its JSON: its bytes object's header and list slot (and
its spool id), for ``max_queue_bytes`` (measured by ``benchmarks/object_overhead.py``)."""
WAITING_OVERHEAD = 200
"""Bytes an event waiting for its batch takes beyond its JSON, for ``max_queue_bytes``: its
tuple, its order and time, the bytes object's header and the list slot (measured with
tracemalloc by ``benchmarks/object_overhead.py``, which prints the figure this must stay above)."""

Waiting = tuple[int, float, bytes, SpoolId]
"""An accepted event waiting for its batch: ``(seq, accepted_at, body, spool_id)``.

- ``seq``: its acceptance order (-1: read back from a spool, older than any of this run);
- ``accepted_at``: ``time.monotonic()`` when accepted (in this process's clock);
- ``body``: its JSON, as sent;
- ``spool_id``: its id in the spool, 0 when it is not in one.

A plain tuple of bytes and numbers, because the garbage collector stops tracking such a tuple at
its first pass: a full collection then skips every waiting event (a tracked object per waiting
event cost about 20 ms per full pass over 100,000 of them on the benchmark machine:
benchmarks/RESULTS.md, goal 4)."""
SEQ: Final = 0
ACCEPTED_AT: Final = 1
BODY: Final = 2
SPOOL_ID: Final = 3


_body_of = operator.itemgetter(BODY)
"""The work per event of cutting and sealing a batch is done with C iterators (``map``, ``zip``,
``sum``, ``accumulate``), not a Python loop: a worker does it under the lock callers take too."""


def waiting_memory(items: Sequence[Waiting]) -> int:
    """What ``items`` count against ``max_queue_bytes``."""
    return sum(map(len, map(_body_of, items))) + WAITING_OVERHEAD * len(items)


_batch_ids = itertools.count(1)


class Batch:
    """Events that travel in one request, to one destination: their bytes, joined into the
    request's body only when it is sent (:meth:`body`), so a batch waiting for a retry holds
    one copy of its events and a refused one splits without encoding anything again."""

    __slots__ = ("attempts", "count", "destination", "id", "min_seq", "oldest", "parts", "size", "spool_ids")

    def __init__(self, destination: OdpIntegration, parts: list[bytes], min_seq: int, oldest: float,
                 spool_ids: list[SpoolId] | None = None, attempts: int = 0) -> None:
        self.destination = destination
        self.parts = parts
        """Each event's JSON, in acceptance order."""
        self.count = len(parts)
        self.size = sum(map(len, parts)) + 2 * len(parts)
        """The length of :meth:`body`."""
        self.min_seq = min_seq
        """The acceptance order of its first event, for flush()."""
        self.oldest = oldest
        """``time.monotonic()`` when its oldest event was accepted."""
        self.spool_ids = spool_ids
        """Each event's id in the spool (0: not in it), or None when none is."""
        self.attempts = attempts
        self.id = next(_batch_ids)

    def body(self) -> bytes | encoding.JoinedBody:
        """The request body: ``json.dumps`` of the list of events, as the official client sends it.
        Made anew for each request, which holds it only while it is sent: joined at once when
        small, a piece at a time when large (:func:`~optimizely_odp_ext.encoding.body_of`)."""
        return encoding.body_of(self.parts, self.size)

    @property
    def memory(self) -> int:
        """What it counts against ``max_queue_bytes``."""
        return self.size + BATCH_OVERHEAD + PART_OVERHEAD * self.count

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, each event with the bytes it had.

        Both halves keep this batch's ``min_seq``: flush() may then wait for a few events
        accepted after it, never miss one accepted before.
        """
        half = self.count // 2
        ids = self.spool_ids
        return (Batch(self.destination, self.parts[:half], self.min_seq, self.oldest,
                      None if ids is None else ids[:half], self.attempts),
                Batch(self.destination, self.parts[half:], self.min_seq, self.oldest,
                      None if ids is None else ids[half:], self.attempts))

    def __repr__(self) -> str:
        return f"Batch(id={self.id}, host={self.destination.host!r}, count={self.count})"


def seal(destination: OdpIntegration, items: Sequence[Waiting]) -> Batch:
    """The batch of waiting events (in acceptance order)."""
    seqs, accepted_at, bodies, spool_ids = zip(*items)
    return Batch(destination, list(bodies), seqs[0], min(accepted_at), list(spool_ids) if any(spool_ids) else None)


class Destination:
    """The events bound for one integration (host and key), and its retry state."""

    __slots__ = ("failures", "in_flight", "integration", "not_before", "ready", "sealing",
                 "server_wait_until", "unauthorized", "waiting")

    def __init__(self, integration: OdpIntegration) -> None:
        self.integration = integration
        self.waiting: list[Waiting] = []
        """Events not cut into a batch yet, in acceptance order (events read back from a spool
        first)."""
        self.ready: deque[Batch] = deque()
        """Batches to send as they are: new ones, retries, the halves of a refused batch."""
        self.sealing = 0
        """Batches being cut right now (their events are in none of the lists above)."""
        self.in_flight = 0
        self.failures = 0
        """Consecutive failed attempts; while > 0 only one request at a time probes the server."""
        self.not_before = 0.0
        self.server_wait_until = 0.0
        """Until when the server asked us to wait (``Retry-After``); a flush does not cut that short."""
        self.unauthorized = False

    def has_work(self) -> bool:
        return bool(self.waiting or self.ready or self.sealing)

    def is_idle(self) -> bool:
        return not (self.waiting or self.ready or self.sealing or self.in_flight)

    def take_waiting(self, limit: int) -> list[Waiting]:
        """Remove up to ``limit`` waiting events, oldest first."""
        if len(self.waiting) <= limit:
            taken, self.waiting = self.waiting, []
        else:
            taken = self.waiting[:limit]
            del self.waiting[:limit]  # the rest moves in place: a copy of it took a reference to each
        return taken

    def take_batch(self, batch_size: int, max_batch_bytes: int) -> list[Waiting]:
        """Remove the oldest waiting events that make one request: at most ``batch_size``, whose
        body is at most ``max_batch_bytes`` (always at least one event)."""
        count = min(batch_size, len(self.waiting))
        bodies = map(_body_of, itertools.islice(self.waiting, count))
        if 2 + sum(map(len, bodies)) + 2 * count > max_batch_bytes:  # "[", "]", each body and its ", "
            bodies = map(_body_of, itertools.islice(self.waiting, count))
            sizes = list(itertools.accumulate(map(operator.add, map(len, bodies), itertools.repeat(2))))
            count = max(1, bisect.bisect_right(sizes, max_batch_bytes - 2))
        return self.take_waiting(count)

    def put_back_first(self, items: Sequence[Waiting]) -> None:
        """Events that go before those waiting (read back from a spool, or re-homed)."""
        self.waiting[:0] = items

    def can_send(self, now: float) -> bool:
        return now >= self.not_before and (self.failures == 0 or self.in_flight == 0)

    def due_at(self, flush_interval: float) -> float | None:
        """When this destination next has something to do (None: nothing waiting)."""
        times = []
        if self.ready:
            times.append(self.not_before)
        if self.waiting:
            times.append(self.waiting[0][1] + flush_interval)
        return min(times) if times else None

    def min_seq(self) -> int | None:
        seqs = [batch.min_seq for batch in self.ready]
        if self.waiting:
            seqs.append(self.waiting[0][0])
        return min(seqs) if seqs else None

    def take_expired(self, cutoff: float) -> list[Batch]:
        """Remove and return the ready batches whose oldest event was accepted before ``cutoff``
        (``time.monotonic()``). A batch spans at most ``flush_interval``, so an event is given
        up at most that much before it is ``max_event_age`` old."""
        expired = [batch for batch in self.ready if batch.oldest < cutoff]
        if expired:
            self.ready = deque(batch for batch in self.ready if batch.oldest >= cutoff)
        return expired
