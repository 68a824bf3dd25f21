"""Sending a spool's events again, for ``optimizely-odp spool replay``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optimizely_odp_ext import encoding
from optimizely_odp_ext.cli.common import seconds
from optimizely_odp_ext.cli.progress import Progress
from optimizely_odp_ext.integration import OdpIntegration, mask_key
from optimizely_odp_ext.retry import backoff_delay
from optimizely_odp_ext.settings import SETTINGS_BY_NAME
from optimizely_odp_ext.spool.base import SpoolId
from optimizely_odp_ext.transport import Outcome, OutcomeKind, Transport

if TYPE_CHECKING:
    from optimizely_odp_ext.spool import SqliteSpool

REPLAY_RETRIES = 3
REPLAY_MAX_BACKOFF = 30.0
MAX_BATCH_BYTES = int(SETTINGS_BY_NAME["max_batch_bytes"].default)


@dataclass
class Batch:
    """Spooled events that travel in one request: their bytes and their spool ids."""

    destination: OdpIntegration
    bodies: list[bytes] = field(default_factory=list)
    ids: list[SpoolId] = field(default_factory=list)

    def body(self) -> bytes:
        return encoding.join(self.bodies)

    def split(self) -> tuple[Batch, Batch]:
        half = len(self.bodies) // 2
        return (Batch(self.destination, self.bodies[:half], self.ids[:half]),
                Batch(self.destination, self.bodies[half:], self.ids[half:]))


class Replay:
    """Sends a spool's events, batched per destination, one request at a time; deletes
    what ODP acknowledged. A destination that keeps failing (after a few retries) or
    refuses the key is given up for this run; its events stay in the spool. An event
    ODP refuses on its own (400/413/422, found by splitting the batch) is deleted, as
    the event manager drops it."""

    def __init__(self, spool: SqliteSpool, transport: Transport, batch_size: int,
                 progress_interval: float | None = None) -> None:
        self.spool = spool
        self.transport = transport
        self.batch_size = batch_size
        self.total = spool.count()
        self.delivered = self.refused = self.skipped = 0
        self.blocked: dict[OdpIntegration, str] = {}
        self.progress = (Progress("replay", self.total) if progress_interval is None
                         else Progress("replay", self.total, interval=progress_interval))

    def run(self) -> None:
        """Replay every event. Blocks until done (each request up to the transport's timeout)."""
        try:
            self._run()
        finally:
            self.progress.close()

    def _run(self) -> None:
        pending: dict[OdpIntegration, Batch] = {}
        sizes: dict[OdpIntegration, int] = {}
        for event in self.spool.iter_all(chunk=max(self.batch_size, 1000)):
            destination = OdpIntegration(event.host, event.api_key)
            if destination in self.blocked:
                self._done(skipped=1)
                continue
            batch = pending.setdefault(destination, Batch(destination))
            if batch.ids and (len(batch.ids) >= self.batch_size
                              or sizes[destination] + len(event.body) + 2 > MAX_BATCH_BYTES):
                self._send(batch)
                batch = pending[destination] = Batch(destination)
            if not batch.ids:
                sizes[destination] = 2
            batch.bodies.append(event.body)
            batch.ids.append(event.id)
            sizes[destination] += len(event.body) + 2
        for batch in pending.values():
            if batch.ids:
                self._send(batch)

    def _send(self, batch: Batch) -> None:
        destination = batch.destination
        if destination in self.blocked:
            self._done(skipped=len(batch.ids))
            return
        outcome = self._post(batch)
        if outcome.kind is OutcomeKind.DELIVERED:
            self.spool.delete(batch.ids)
            self._done(delivered=len(batch.ids))
        elif outcome.kind is OutcomeKind.REJECTED and len(batch.ids) > 1:
            for half in batch.split():
                self._send(half)
        elif outcome.kind is OutcomeKind.REJECTED:
            rowid = batch.ids[0]
            self.progress.warn(f"ODP refused event {rowid} ({outcome.detail}); it is deleted")
            self.spool.delete([rowid])
            self._done(refused=1)
        else:
            self.blocked[destination] = outcome.detail or outcome.kind.value
            self.progress.warn(f"giving up {destination.host} (key {mask_key(destination.api_key)}) for this "
                               f"replay: {outcome.detail or outcome.kind.value}; its events stay in the spool")
            self._done(skipped=len(batch.ids))

    def _post(self, batch: Batch) -> Outcome:
        body = batch.body()
        failures = 0
        while True:
            outcome = self.transport.send(batch.destination, body)
            if outcome.kind is not OutcomeKind.RETRY or failures >= REPLAY_RETRIES:
                return outcome
            failures += 1
            delay = min(REPLAY_MAX_BACKOFF, backoff_delay(failures, 0.5, REPLAY_MAX_BACKOFF, outcome.retry_after))
            self.progress.warn(f"{batch.destination.host}: {outcome.detail}; "
                               f"retry {failures}/{REPLAY_RETRIES} in {seconds(delay)}")
            self.progress.set_status(f"retrying {batch.destination.host}")
            time.sleep(delay)  # a command-line pause between retries; Ctrl-C interrupts it
            self.progress.set_status("")

    def _done(self, delivered: int = 0, refused: int = 0, skipped: int = 0) -> None:
        self.delivered += delivered
        self.refused += refused
        self.skipped += skipped
        self.progress.advance(delivered=delivered, failed=refused + skipped)
