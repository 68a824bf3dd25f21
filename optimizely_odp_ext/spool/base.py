"""The seam between an event manager and a durable store of accepted events.

A manager talks to one small :class:`Spool` protocol; each store is its own module:
:mod:`~optimizely_odp_ext.spool.sqlite` (embedded, one process on one host) and
:mod:`~optimizely_odp_ext.spool.redis_streams` (a fleet, any host). Nothing here imports
a store's library.

Two ways a store is used, told by :attr:`Spool.shared`:

- **not shared** (SQLite): the events a process appends stay with that process, which
  delivers them from memory and acknowledges each once ODP did. :meth:`Spool.claim` only
  hands out what a previous run left behind.
- **shared** (a Redis stream read by a consumer group): every process appends, and any
  live member delivers what :meth:`Spool.claim` hands it, including entries a dead member
  left pending. A process does not keep what it appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, Union

SpoolId = Union[int, str]
"""What a store calls one stored event: an SQLite rowid, a Redis stream entry id."""


class SpoolError(Exception):
    """The spool cannot be used (corrupt, unwritable, not a spool, locked by another process)."""


class SpoolLockedError(SpoolError):
    """Another process (or another opener in this one) holds a spool that allows one user."""


class SpoolUnavailableError(SpoolError):
    """The store cannot be reached for now (a server down or slow); try again later.
    Nothing was written."""


class SpoolRecord(NamedTuple):
    """One accepted event, as a store keeps it."""

    host: str
    """The ODP host it goes to; ``""`` when not known yet (accepted before the datafile)."""
    api_key: str
    """The public key that goes with ``host``; ``""`` with an unknown host."""
    body: bytes
    """The event's JSON exactly as it is sent (its idempotence id inside)."""
    accepted_at: float
    """Wall-clock ``time.time()`` when it was accepted."""


class SpooledEvent(NamedTuple):
    """One stored event and the store's id for it."""

    id: SpoolId
    host: str
    api_key: str
    body: bytes
    accepted_at: float

    @property
    def record(self) -> SpoolRecord:
        return SpoolRecord(self.host, self.api_key, self.body, self.accepted_at)


class Spool(Protocol):
    """What an event manager needs of a durable store. Every method is thread-safe and may
    block for the store's I/O (bounded by the store's own timeouts); none raises anything
    but :class:`SpoolError` and its subclasses."""

    shared: bool
    """True: appended events are delivered by whichever member of the fleet claims them (see
    the module docstring); False: the appending process delivers them itself."""
    write_through: bool
    """True: the manager appends each event on the caller's thread before ``send`` returns (a
    local store that commits in microseconds). False: a background writer appends in groups."""
    description: str
    """Where the spool is, fit for logs: a path, or a URL without its password."""

    def append(self, records: Sequence[SpoolRecord]) -> list[SpoolId]:
        """Store ``records`` durably, in one commit, in order; return their ids.

        Raises:
            SpoolUnavailableError: the store cannot be reached now; nothing was stored.
            SpoolError: the store cannot be used.
        """

    def claim(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` stored events this process should deliver now, oldest first, and
        that it was not handed before (unless a store gives up on a member, see ``shared``)."""

    def ack(self, ids: Sequence[SpoolId]) -> None:
        """These events are delivered, or given up by a documented rule: remove them."""

    def stats(self) -> dict[str, Any]:
        """A summary for ``odp_stats()`` and ``doctor``: at least ``kind``, ``state`` and
        ``description``; what else a store can tell cheaply (events, bytes, pending)."""

    def close(self) -> None:
        """Release the store. Idempotent."""


class SharedSpool(Spool, Protocol):
    """A spool a fleet shares (``shared`` is True): what a deliverer needs beyond :class:`Spool`."""

    touch_interval: float
    """Seconds between two :meth:`touch` calls a deliverer keeps to."""

    def touch(self, ids: Sequence[SpoolId]) -> list[SpoolId]:
        """Keep these claimed, still undelivered events this process's; return those another
        member took over meanwhile (delivering them too only makes a duplicate ODP recognises)."""

    def release(self, ids: Sequence[SpoolId]) -> None:
        """Give claimed events back undelivered: any member may claim them at once."""

    def delivered_up_to(self, spool_id: SpoolId) -> bool:
        """Every event stored up to ``spool_id`` (an id :meth:`append` returned) is resolved by
        the fleet. For ``flush()``."""
