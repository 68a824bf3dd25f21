"""Rate-limited log lines: the first at once, then one summary per key per interval.

During an outage the same line can be due a hundred thousand times a minute (every event
refused with ``queueFull``). :class:`LogRateLimiter` writes the first occurrence of a key
in full, counts the next ones of the same key for ``interval`` seconds, and writes one
summary line with that count (``... and 12,345 more events refused (queueFull) in the
last 10 s.``) when the key comes up again after the interval, or when :meth:`flush` is
called (the client calls it from ``flush()`` and ``close()``). A summary is never written
on a timer: with no new occurrence and no flush, the count waits.

Only the log is thinned out: callers keep counting every occurrence in their own
counters and return every result in full.

Usage::

    limiter = LogRateLimiter(interval=10.0)
    limiter.log(logger.warning, "events refused (queueFull)", message)
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

LogMethod = Callable[[str], object]
"""A bound logger method such as ``logger.warning``: called with the finished line."""

DEFAULT_INTERVAL = 10.0
"""Seconds between two full lines of one key."""


class _Window:
    """One key's current interval: when it ends and how many lines it held back."""

    __slots__ = ("ends", "held_back", "log_method", "started")

    def __init__(self, started: float, ends: float, log_method: LogMethod) -> None:
        self.started = started
        self.ends = ends
        self.log_method = log_method
        self.held_back = itertools.count()
        """``next()`` on it is atomic under the GIL; read it with :func:`count_value`."""


def count_value(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on a fresh ``itertools.count()``: a counter that
    threads may bump without a lock (``next()`` is atomic under the GIL). Non-blocking."""
    return int(repr(counter)[6:-1])  # "count(12)"


class LogRateLimiter:
    """Writes repeated log lines at most once per key per interval, plus a summary.

    Args:
        interval: Seconds during which further lines of a key are only counted.
        clock: Monotonic clock (seconds); for tests.

    Thread-safe and non-blocking: :meth:`log` does O(1) work, never waits for a lock held
    by another thread (a thread that finds the key's interval being renewed counts its line
    in the summary instead), and calls the log method outside any lock.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._renewing = threading.Lock()

    def log(self, log_method: LogMethod, key: str, message: str) -> bool:
        """Write ``message`` with ``log_method`` now, or count it for ``key``'s summary.

        ``key`` names the kind of line and is used in the summary, so make it read as
        a plural noun phrase: ``"events refused (queueFull)"``. Returns True when the line
        was written now. Non-blocking, O(1), thread-safe.
        """
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.ends:
            next(window.held_back)
            return False
        if not self._renewing.acquire(blocking=False):
            if window is not None:  # another thread renews a window right now: be counted
                next(window.held_back)
                return False
            log_method(message)  # the very first line of a key, raced: write it rather than lose it
            return True
        try:
            window = self._windows.get(key)
            if window is not None and now < window.ends:
                next(window.held_back)
                return False
            self._windows[key] = _Window(now, now + self.interval, log_method)
        finally:
            self._renewing.release()
        if window is not None:
            self._write_summary(key, window, now)
        log_method(message)
        return True

    def flush(self) -> None:
        """Write the summary of every key that held lines back, now, and start afresh.
        Non-blocking apart from the logging itself; thread-safe."""
        now = self._clock()
        with self._renewing:
            windows, self._windows = self._windows, {}
        for key, window in windows.items():
            self._write_summary(key, window, now)

    def _write_summary(self, key: str, window: _Window, now: float) -> None:
        held_back = count_value(window.held_back)
        if held_back:
            seconds = max(1, round(now - window.started))
            window.log_method(f"... and {held_back:,} more {key} in the last {seconds} s.")
