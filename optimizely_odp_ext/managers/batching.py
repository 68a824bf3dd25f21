"""Where accepted events wait, per destination, and how they are cut into batches.

Pure data structures, no threads and no I/O: the event managers drive them, through
their :class:`~optimizely_odp_ext.managers.ledger.DeliveryLedger`, under their lock.
Events are kept as encoded JSON so memory is counted in bytes and a retried event is
sent byte for byte (same idempotence id) every time.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.spool.base import SpoolId


class Item(NamedTuple):
    """One encoded event waiting to be delivered."""

    seq: int
    """Order of acceptance (assigned by the sender), for flush()."""
    body: bytes
    accepted_at: float
    """``time.monotonic()`` when accepted."""
    spool_id: SpoolId = 0
    """Its row in the durable spool, 0 when the manager keeps events in memory only."""


_batch_ids = itertools.count(1)


@dataclass
class Batch:
    """Events that travel in one request, to one destination."""

    destination: OdpIntegration
    items: list[Item]
    attempts: int = 0
    id: int = field(default_factory=lambda: next(_batch_ids))

    @property
    def min_seq(self) -> int:
        return min(item.seq for item in self.items)

    @property
    def size_bytes(self) -> int:
        return sum(len(item.body) for item in self.items)

    def body(self) -> bytes:
        return b"[" + b",".join(item.body for item in self.items) + b"]"

    def split(self) -> tuple[Batch, Batch]:
        half = len(self.items) // 2
        return (Batch(self.destination, self.items[:half], self.attempts),
                Batch(self.destination, self.items[half:], self.attempts))


@dataclass
class Destination:
    """The events bound for one integration (host and key), and its retry state."""

    integration: OdpIntegration
    pending: deque[Item] = field(default_factory=deque)
    """New events, oldest first."""
    pending_bytes: int = 0
    ready_batches: deque[Batch] = field(default_factory=deque)
    """Batches to send as they are: retries and the halves of a refused batch."""
    in_flight: int = 0
    failures: int = 0
    """Consecutive failed attempts; while > 0 only one request at a time probes the server."""
    not_before: float = 0.0
    server_wait_until: float = 0.0
    """Until when the server asked us to wait (``Retry-After``); a flush does not cut that short."""
    unauthorized: bool = False

    def has_work(self) -> bool:
        return bool(self.pending or self.ready_batches)

    def add(self, item: Item) -> None:
        self.pending.append(item)
        self.pending_bytes += len(item.body)

    def can_send(self, now: float) -> bool:
        return now >= self.not_before and (self.failures == 0 or self.in_flight == 0)

    def next_batch(self, now: float, flush_interval: float, batch_size: int, max_bytes: int,
                   flushing: bool) -> Batch | None:
        """The batch to send now, if one is due: a ready batch first, then new events when a
        full batch has gathered, the oldest has waited ``flush_interval``, or a flush is on."""
        if self.ready_batches:
            return self.ready_batches.popleft()
        if not self.pending:
            return None
        full = len(self.pending) >= batch_size or self.pending_bytes >= max_bytes
        if not (full or flushing or now - self.pending[0].accepted_at >= flush_interval):
            return None
        items: list[Item] = []
        size = 2
        while self.pending and len(items) < batch_size:
            body_len = len(self.pending[0].body) + 1
            if items and size + body_len > max_bytes:
                break
            item = self.pending.popleft()
            items.append(item)
            size += body_len
            self.pending_bytes -= len(item.body)
        return Batch(self.integration, items)

    def due_at(self, flush_interval: float) -> float | None:
        """When this destination next has a batch due (None: nothing waiting)."""
        if self.ready_batches:
            return self.not_before
        if self.pending:
            return max(self.not_before, self.pending[0].accepted_at + flush_interval)
        return None

    def min_seq(self) -> int | None:
        seqs = [b.min_seq for b in self.ready_batches]
        if self.pending:
            seqs.append(self.pending[0].seq)
        return min(seqs) if seqs else None

    def take_older_than(self, cutoff: float) -> list[Item]:
        """Remove and return the events accepted before ``cutoff`` (monotonic seconds)."""
        expired: list[Item] = []
        while self.pending and self.pending[0].accepted_at < cutoff:
            item = self.pending.popleft()
            self.pending_bytes -= len(item.body)
            expired.append(item)
        for batch in self.ready_batches:
            old = [item for item in batch.items if item.accepted_at < cutoff]
            if old:
                expired.extend(old)
                batch.items = [item for item in batch.items if item.accepted_at >= cutoff]
        self.ready_batches = deque(b for b in self.ready_batches if b.items)
        return expired

    def take_all(self) -> list[Item]:
        items = list(self.pending)
        for batch in self.ready_batches:
            items.extend(batch.items)
        self.pending.clear()
        self.pending_bytes = 0
        self.ready_batches.clear()
        return items
