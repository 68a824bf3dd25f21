"""Where accepted events wait, per destination, and how they become batches.

Pure data structures, no threads and no I/O: the event managers drive them, through their
:class:`~optimizely_odp_ext.managers.ledger.DeliveryLedger`, under their lock. Encoding a batch
(:func:`seal`) is the one slow step, and it runs without the lock.

An event waits at its destination as a flat tuple of its fields (or as bytes, when a spool stored it)
until its batch is cut; from then on the batch is one encoded body, so memory is close to the
bytes sent, and a retried batch is sent byte for byte (same idempotence ids) every time.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

from optimizely_odp_ext import encoding
from optimizely_odp_ext.event import OdpEvent, wire_dict
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.spool.base import SpoolId

BATCH_OVERHEAD = 256
"""Bytes a batch takes beyond its body (the objects that hold it), for ``max_queue_bytes``."""
SPOOL_ID_OVERHEAD = 40
"""Bytes one spool id takes in memory (a list slot and an int)."""
OBJECT_OVERHEAD = 100
PER_FIELD_OVERHEAD = 88
"""Bytes an event not yet encoded takes beyond its JSON, for ``max_queue_bytes``: about
``OBJECT_OVERHEAD + PER_FIELD_OVERHEAD * fields`` (its tuple, and each field's key and value as
objects of their own; measured with tracemalloc for events of 3 to 301 fields by
``benchmarks/object_overhead.py``, which prints the figures this must stay above)."""


Queued = tuple[Any, ...]
"""An accepted event as it waits for its batch, as one flat tuple: ``(seq, accepted_at, type,
action, n, m, size, *identifier keys, *identifier values, *data keys, *data values)``, ``n`` and
``m`` being how many identifiers and data fields it has and ``size`` what it counts against
``max_queue_bytes``.

Flat, because the garbage collector leaves alone a tuple that holds only strings and numbers: a
full collection then skips every waiting event. A tuple holding the event's dicts stays tracked
(about 20 ms per full pass over 100,000 waiting events on the benchmark machine), and tuples of
pairs cost more allocations, so more frequent collections (benchmarks/RESULTS.md, goal 4)."""

_FIELDS = 7
"""Where the identifier keys start in a :data:`Queued` tuple."""


def object_size(json_estimate: int, event: OdpEvent) -> int:
    """What an event not yet encoded counts against ``max_queue_bytes``. O(1)."""
    data = event.data
    return json_estimate + OBJECT_OVERHEAD + PER_FIELD_OVERHEAD * (len(event.identifiers) + (len(data) if data else 0))


def queued(seq: int, event: OdpEvent, size: int) -> Queued:
    """The compact form of ``event``, with its acceptance order and counted size."""
    ids = event.identifiers
    data = event.data
    if data:
        return (seq, event.accepted_at, event.type, event.action, len(ids), len(data), size,
                *ids, *ids.values(), *data, *data.values())
    return (seq, event.accepted_at, event.type, event.action, len(ids), 0, size, *ids, *ids.values())


class Encoded(NamedTuple):
    """An event that was encoded already (a spool keeps it as bytes)."""

    seq: int
    """Its acceptance order (-1: read back from a spool, older than any of this run)."""
    accepted_at: float
    """``time.monotonic()`` when accepted (in this process's clock)."""
    body: bytes
    spool_id: SpoolId
    """Its id in the spool; 0 when it is not in one."""


Waiting = Union[Queued, Encoded]
"""An event waiting for its batch. ``item[0]`` is its acceptance order, ``item[1]`` when."""

_batch_ids = itertools.count(1)


class Batch:
    """Events that travel in one request, to one destination, as one encoded body."""

    __slots__ = ("attempts", "body", "count", "destination", "id", "min_seq", "oldest", "spool_ids")

    def __init__(self, destination: OdpIntegration, body: bytes, count: int, min_seq: int, oldest: float,
                 spool_ids: list[SpoolId] | None = None, attempts: int = 0) -> None:
        self.destination = destination
        self.body = body
        self.count = count
        self.min_seq = min_seq
        """The acceptance order of its first event, for flush()."""
        self.oldest = oldest
        """``time.monotonic()`` when its oldest event was accepted."""
        self.spool_ids = spool_ids
        """Each event's id in the spool (0: not in it), or None when none is."""
        self.attempts = attempts
        self.id = next(_batch_ids)

    @property
    def memory(self) -> int:
        """What it counts against ``max_queue_bytes``."""
        return len(self.body) + BATCH_OVERHEAD + SPOOL_ID_OVERHEAD * len(self.spool_ids or ())

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, each event with the bytes it had (decoded and encoded again).

        Both halves keep this batch's ``min_seq``: flush() may then wait for a few events
        accepted after it, never miss one accepted before.
        """
        parts = encoding.split(self.body)
        half = len(parts) // 2
        ids = self.spool_ids
        return (Batch(self.destination, encoding.join(parts[:half]), half, self.min_seq, self.oldest,
                      None if ids is None else ids[:half], self.attempts),
                Batch(self.destination, encoding.join(parts[half:]), len(parts) - half, self.min_seq, self.oldest,
                      None if ids is None else ids[half:], self.attempts))

    def __repr__(self) -> str:
        return f"Batch(id={self.id}, host={self.destination.host!r}, count={self.count})"


def json_size_estimate(event: OdpEvent) -> int:
    """About how many bytes of JSON ``event`` makes (an upper estimate for ASCII text). Costs about
    a microsecond for a small event: a manager measures only a sample."""
    size = 170 + len(event.type) + len(event.action)  # the keys, punctuation and default data
    for pairs in (event.identifiers, event.data or {}):
        for key, value in pairs.items():
            size += len(key) + (len(value) if isinstance(value, str) else 24) + 8
    return size


def to_wire(item: Queued) -> dict[str, Any]:
    """The dict ``json.dumps`` turns into the event's bytes (a new idempotence id)."""
    n = item[4]
    values = _FIELDS + n
    data_keys = values + n
    identifiers = ({item[_FIELDS]: item[values]} if n == 1  # the usual case, cheaper
                   else dict(zip(item[_FIELDS:values], item[values:data_keys])))
    m = item[5]
    data = zip(item[data_keys:data_keys + m], item[data_keys + m:]) if m else None
    return wire_dict(item[2], item[3], identifiers, data)


def seal(destination: OdpIntegration, items: Sequence[Waiting], size_hint: int) -> Batch:
    """Encode waiting events (in acceptance order) into one batch. Slow (it encodes), so it
    runs without the lock.

    Raises:
        ValueError, TypeError, OverflowError: an event cannot be encoded (validation should
            make that impossible).
    """
    spool_ids: list[SpoolId] | None = None
    if all(type(item) is tuple for item in items):
        body = encoding.encode_list(items, size_hint, to_wire)
    else:
        body = encoding.join([item.body if isinstance(item, Encoded) else encoding.encode(to_wire(item))
                              for item in items])
        spool_ids = [item.spool_id if isinstance(item, Encoded) else 0 for item in items]
    return Batch(destination, body, len(items), items[0][0], min(item[1] for item in items), spool_ids)


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
        """Batches being encoded right now (their events are in none of the lists above)."""
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
            taken, self.waiting = self.waiting[:limit], self.waiting[limit:]
        return taken

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
