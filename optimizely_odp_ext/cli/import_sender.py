"""Delivering an import's batches: several requests in flight over one keep-alive
:class:`~optimizely_odp_ext.transport.Transport`, with the library's retry rules, and an
acknowledgement per batch (which the import's checkpoint needs and the event managers do
not expose).

The rules (those of :mod:`optimizely_odp_ext.retry`, for a one-off command):

- network errors, timeouts, 408, 429, 5xx: retried with the library's backoff (a
  ``Retry-After`` wins); while ODP is failing, one request at a time probes it. After
  ``retry_for`` seconds without a success the import stops (its rows are not refused:
  a rerun resumes them).
- 400, 413, 422: the batch is split in halves until the refused rows are alone; those are
  refused (they go to the reject file), the rest delivered.
- 401, 403 (the key is refused) or any other answer: the import stops; nothing is refused.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from optimizely_odp_ext import encoding
from optimizely_odp_ext.cli.common import masked, seconds
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.retry import backoff_delay
from optimizely_odp_ext.settings import SETTINGS_BY_NAME
from optimizely_odp_ext.transport import Outcome, OutcomeKind, Transport

INITIAL_BACKOFF = float(SETTINGS_BY_NAME["retry_initial_backoff"].default)
MAX_BACKOFF = float(SETTINGS_BY_NAME["retry_max_backoff"].default)
_STOP_CHECK = 0.25
"""Seconds between two looks at the stop flag while waiting to retry."""


class Item(NamedTuple):
    """One row's event, encoded."""

    row: int
    body: bytes


@dataclass
class Batch:
    """Rows that travel in one request."""

    items: list[Item] = field(default_factory=list)

    def body(self) -> bytes:
        return encoding.join([item.body for item in self.items])

    def split(self) -> tuple[Batch, Batch]:
        half = len(self.items) // 2
        return Batch(self.items[:half]), Batch(self.items[half:])


class BatchResult(NamedTuple):
    """What became of one batch's events."""

    delivered: list[Item]
    refused: list[tuple[Item, str]]
    """Events ODP refused on their own, with its answer."""
    unsent: list[Item]
    """Events not resolved: the import stopped before they were delivered."""


class _Pacer:
    """The destination's health, shared by the workers: after a failure only one request
    at a time probes ODP, after the backoff. Thread-safe."""

    def __init__(self, retry_for: float, stopping: threading.Event) -> None:
        self._retry_for = retry_for
        self._stopping = stopping
        self._cond = threading.Condition()
        self._failures = 0
        self._not_before = 0.0
        self._probing = False
        self._failing_since: float | None = None
        self.last_failure = ""
        self.gave_up = ""

    def acquire(self) -> bool | None:
        """Wait for a turn to send. True: this request is the probe of a failing ODP; False:
        a normal request; None: the import is stopping."""
        with self._cond:
            while not self._stopping.is_set():
                now = time.monotonic()
                if self._failures == 0:
                    return False
                if not self._probing and now >= self._not_before:
                    self._probing = True
                    return True
                wait = self._not_before - now if not self._probing else _STOP_CHECK
                self._cond.wait(min(max(wait, 0.001), _STOP_CHECK))
            return None

    def release(self, probe: bool, failure: Outcome | None) -> None:
        """The request ended: ``failure`` is the outcome of a failed one (None: ODP answered)."""
        with self._cond:
            if probe:
                self._probing = False
            now = time.monotonic()
            if failure is None:
                self._failures, self._failing_since, self.last_failure = 0, None, ""
            else:
                self._failures += 1
                if self._failing_since is None:
                    self._failing_since = now
                failing_for = now - self._failing_since
                detail = failure.detail or failure.kind.value
                if failing_for >= self._retry_for:
                    self.gave_up = f"ODP did not accept a request for {seconds(failing_for)} (last: {detail})"
                    self._stopping.set()
                delay = backoff_delay(self._failures, INITIAL_BACKOFF, MAX_BACKOFF, failure.retry_after)
                delay = min(delay, self._retry_for - failing_for)  # one last try when the time is up
                self._not_before = max(self._not_before, now + delay)
                self.last_failure = f"{detail}, retry in {seconds(delay)}"
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def failing(self) -> bool:
        with self._cond:
            return self._failures > 0


class Sender:
    """Sends the batches of one import to one destination from ``workers`` threads.

    ``submit`` never blocks; ``results`` blocks up to its timeout. The caller (one thread)
    bounds how many batches it has outstanding. Daemon threads: a second Ctrl-C ends the
    process at once.
    """

    def __init__(self, destination: OdpIntegration, *, workers: int, timeout: float, retry_for: float) -> None:
        self.destination = destination
        self.stopping = threading.Event()
        self.stop_reason = ""
        self._transport = Transport(timeout, pool_size=workers)
        self._pacer = _Pacer(retry_for, self.stopping)
        self._work: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BatchResult] = queue.SimpleQueue()
        self._reason_lock = threading.Lock()
        self.outstanding = 0
        self._threads = [threading.Thread(target=self._run, name=f"odp-import-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, batch: Batch) -> None:
        """Queue a batch. Non-blocking; call from the owning thread."""
        self.outstanding += 1
        self._work.put(batch)

    def results(self, timeout: float) -> list[BatchResult]:
        """Batches finished since the last call; waits up to ``timeout`` for the first. Blocks."""
        finished: list[BatchResult] = []
        try:
            finished.append(self._done.get(timeout=timeout))
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self.outstanding -= len(finished)
        return finished

    def stop(self) -> None:
        """Send no more requests: queued batches come back unsent, requests under way finish
        (within the timeout). Non-blocking."""
        self.stopping.set()
        self._pacer.wake()

    @property
    def status(self) -> str:
        """What holds delivery up, for the progress display ("" when nothing does)."""
        if self._pacer.failing:
            return f"ODP failing: {self._pacer.last_failure}"
        return ""

    @property
    def gave_up(self) -> str:
        """Why the import stopped on its own ("" if it did not)."""
        with self._reason_lock:
            return self._pacer.gave_up or self.stop_reason

    def close(self) -> None:
        """Stop the workers (those in a request finish it on their own). Non-blocking."""
        self.stop()
        for _ in self._threads:
            self._work.put(None)
        self._transport.close()

    # -- worker side -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            try:
                result = self._deliver(batch)
            except Exception as error:  # never lose track of a batch: report it unsent
                self._give_up(f"internal error: {type(error).__name__}: {error}")
                result = BatchResult([], [], list(batch.items))
            self._done.put(result)

    def _deliver(self, batch: Batch) -> BatchResult:
        delivered: list[Item] = []
        refused: list[tuple[Item, str]] = []
        todo = [batch]
        while todo:
            part = todo.pop()
            outcome = self._post(part)
            if outcome is None:
                return BatchResult(delivered, refused, [item for b in [part, *todo] for item in b.items])
            if outcome.kind is OutcomeKind.DELIVERED:
                delivered.extend(part.items)
            elif outcome.kind is OutcomeKind.REJECTED and len(part.items) > 1:
                first, second = part.split()
                todo.extend((second, first))
            elif outcome.kind is OutcomeKind.REJECTED:
                refused.append((part.items[0], outcome.detail))
            else:
                what = (f"ODP refused the key {masked(self.destination.api_key)}"
                        if outcome.kind is OutcomeKind.UNAUTHORIZED else "ODP answered")
                self._give_up(f"{what} ({outcome.detail or outcome.kind.value})")
                return BatchResult(delivered, refused, [item for b in [part, *todo] for item in b.items])
        return BatchResult(delivered, refused, [])

    def _post(self, batch: Batch) -> Outcome | None:
        """Send one batch until ODP answers something other than "try again"; None if the
        import stops first."""
        body = batch.body()
        while True:
            probe = self._pacer.acquire()
            if probe is None:
                return None
            outcome = self._transport.send(self.destination, body)
            retry = outcome.kind is OutcomeKind.RETRY
            self._pacer.release(probe, outcome if retry else None)
            if not retry:
                return outcome

    def _give_up(self, reason: str) -> None:
        with self._reason_lock:
            if not self.stop_reason:
                self.stop_reason = reason
        self.stop()
