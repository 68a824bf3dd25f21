"""How a manager uses its spool: every store call made safe, and the spool's state for stats.

A store raises :class:`~optimizely_odp_ext.spool.base.SpoolError`; here each call turns a
failure into a value (an id of 0, an empty claim) and one log line per change of state
("ok" → "failing" → "ok"), so a spool that keeps failing does not fill the log, and
``odp_stats()["spool"]`` says what is going on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from optimizely_odp_ext.spool.base import (
    SharedSpool,
    Spool,
    SpooledEvent,
    SpoolError,
    SpoolId,
    SpoolRecord,
    SpoolUnavailableError,
)

OK = "ok"
FAILING = "failing"
"""The last call failed; events are kept in memory meanwhile (see ``last_error``)."""
CLOSED = "closed"
RECOVERED = "recovered"
"""A damaged spool file was renamed aside at opening and a fresh one is in use (see the log)."""
UNAVAILABLE = "unavailable"
"""``last_error_kind``: the store cannot be reached or cannot take it now
(:class:`~optimizely_odp_ext.spool.base.SpoolUnavailableError`); it may work again by itself."""
REFUSED = "refused"
"""``last_error_kind``: the store refused the call (a wrong password, an ACL without the command,
a key of another type): it will not work until someone changes its configuration."""


class SpoolLink:
    """One manager's spool. Thread-safe; each method blocks for the store's I/O (bounded by the
    store's own timeouts) and never raises."""

    def __init__(self, spool: Spool, logger: Any) -> None:
        self.spool = spool
        self.logger = logger
        self._lock = threading.Lock()
        notes: dict[str, Any] = dict(getattr(spool, "opening_notes", None) or {})
        self._opening_notes = notes
        self._state = RECOVERED if notes.get("damaged_file") else OK
        self._last_error = ""
        self._last_error_kind = ""
        self._failures = 0
        self._since = time.time()
        self._figures: dict[str, Any] = {}
        """The store's own figures, read now and then by a worker (:meth:`refresh_figures`)."""

    def opening_log(self) -> list[str]:
        """The lines worth an ERROR when the manager starts (a damaged file renamed aside)."""
        damaged = self._opening_notes.get("damaged_file")
        if not damaged:
            return []
        return [f"ODP spool {self.spool.description} was {self._opening_notes.get('damage', 'damaged')}: "
                f"it was renamed to {damaged} (kept as it was) and a fresh spool is in use."]

    @property
    def shared(self) -> bool:
        return self.spool.shared

    @property
    def write_through(self) -> bool:
        return self.spool.write_through

    def append(self, records: Sequence[SpoolRecord]) -> list[SpoolId] | None:
        """Store ``records``; their ids, or None when the store failed (logged once per failure spell)."""
        try:
            ids = self.spool.append(records)
        except SpoolError as error:
            self._failed("could not store events (they are kept in memory only)", error)
            return None
        self._succeeded()
        return ids

    def ack(self, ids: Sequence[SpoolId]) -> None:
        """Remove delivered or given-up events; a failure is logged (they may be sent again)."""
        ids = [spool_id for spool_id in ids if spool_id]
        if not ids:
            return
        try:
            self.spool.ack(ids)
        except SpoolError as error:
            self._failed(f"could not remove {len(ids)} delivered events (they may be sent again)", error)
            return
        self._succeeded()

    def claim(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` stored events to deliver now; none when the store failed (logged)."""
        try:
            claimed = self.spool.claim(limit)
        except SpoolError as error:
            self._failed("could not be read (its events stay in it)", error)
            return []
        self._succeeded()
        return claimed

    # -- a shared spool (a fleet) -----------------------------------------------------------------
    @property
    def fleet(self) -> SharedSpool:
        assert self.spool.shared
        return cast(SharedSpool, self.spool)

    def touch(self, ids: Sequence[SpoolId]) -> list[SpoolId]:
        """Keep claimed events ours; those another member took over ([] when the store failed)."""
        try:
            lost = self.fleet.touch(ids)
        except SpoolError as error:
            self._failed(f"could not keep {len(ids)} claimed events (another process may take them over)", error)
            return []
        self._succeeded()
        return lost

    def release(self, ids: Sequence[SpoolId]) -> bool:
        """Give claimed events back for another member; False when the store failed (logged; the
        store gives them to another member after ``claim_after`` anyway)."""
        try:
            self.fleet.release(ids)
        except SpoolError as error:
            self._failed(f"could not give back {len(ids)} undelivered events", error)
            return False
        self._succeeded()
        return True

    def delivered_up_to(self, spool_id: SpoolId) -> bool | None:
        """Whether the fleet resolved everything up to ``spool_id``; None when the store failed."""
        try:
            done = self.fleet.delivered_up_to(spool_id)
        except SpoolError as error:
            self._failed("could not tell what the fleet delivered", error)
            return None
        self._succeeded()
        return done

    def refresh_figures(self) -> None:
        """Read the store's own figures (length, pending, oldest age) for :meth:`state`. Blocks for
        the store's round trip; never raises."""
        try:
            figures = dict(self.spool.stats())
        except Exception as error:  # a store's stats() should not raise; never let it stop a worker
            figures = {"figures_error": f"{type(error).__name__}: {error}"}
        for key in ("kind", "state", "description", "last_error"):
            figures.pop(key, None)
        figures["figures_at"] = time.time()
        with self._lock:
            self._figures = figures

    def close(self) -> None:
        try:
            self.spool.close()
        except SpoolError as error:
            self.logger.error(f"ODP spool {self.spool.description} did not close cleanly: {error}")
        with self._lock:
            self._state = CLOSED

    def state(self) -> dict[str, Any]:
        """``kind``, ``state``, ``description``, and when failing ``last_error``,
        ``last_error_kind`` (:data:`UNAVAILABLE` or :data:`REFUSED`) and ``failures``.
        Non-blocking (no store call)."""
        kind = getattr(self.spool, "kind", type(self.spool).__name__)
        with self._lock:
            state: dict[str, Any] = {"kind": kind, "state": self._state, "description": self.spool.description,
                                     "since": self._since}
            if self._last_error:
                state["last_error"] = self._last_error
                state["last_error_kind"] = self._last_error_kind
                state["failures"] = self._failures
            state.update(self._figures)
        state.update(self._opening_notes)
        return state

    def _failed(self, what: str, error: SpoolError) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = str(error)
            self._last_error_kind = UNAVAILABLE if isinstance(error, SpoolUnavailableError) else REFUSED
            changed = self._state != FAILING
            if changed:
                self._state, self._since = FAILING, time.time()
        if changed:
            self.logger.error(f"ODP spool {self.spool.description} {what}: {error}")

    def _succeeded(self) -> None:
        if self._state != FAILING:
            return
        with self._lock:
            changed = self._state == FAILING
            if changed:
                self._state, self._since = OK, time.time()
            failures = self._failures
        if changed:
            self.logger.info(f"ODP spool {self.spool.description} works again (after {failures} failed calls).")
