"""Live progress of a long command (``import``, ``spool replay``) on stderr.

On a terminal, with the ``[progress]`` extra installed, a tqdm bar: events/s, ETA, and
``delivered``/``failed`` beside it. Otherwise (stderr is a file or a pipe, or tqdm is
missing) a plain line every ``interval`` seconds, fit for logs::

    optimizely-odp: import: 12,000/100,000 events (12%), 11,990 delivered, 10 failed, 4,321 events/s, ETA 20s

tqdm is imported here and nowhere else. Not thread-safe: one thread (the command's main
thread) drives a :class:`Progress`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, TextIO

from optimizely_odp_ext.cli.common import PROG, non_negative_float, note, warn

DEFAULT_INTERVAL = 5.0
"""Seconds between two plain progress lines."""
_HINT = "for a live progress bar on a terminal: pip install 'optimizely-odp-ext[progress]'"


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-interval", type=non_negative_float, default=DEFAULT_INTERVAL,
                        metavar="SECONDS", help="when stderr is not a terminal (or tqdm is not installed): "
                        "seconds between two progress lines, 0 for a line at every step (default %(default)g)")


class Progress:
    """Counts resolved events (delivered + failed) against an expected total.

    Args:
        label: what is under way (``import``, ``replay``).
        total: how many events are expected, if known (an estimate is fine; the ETA uses it).
        done: how many were resolved before this run (a resumed import).
        interval: seconds between plain lines; 0 prints a line at every update.
        stream: where to write (default stderr).
    """

    def __init__(self, label: str, total: int | None, *, done: int = 0, interval: float = DEFAULT_INTERVAL,
                 stream: TextIO | None = None, unit: str = "event") -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.delivered = 0
        self.failed = 0
        self.done = done
        self.status = ""
        self._start_done = done
        self._interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()
        self._last_line = self._started
        self._lines = 0
        self._bar = self._make_bar() if _isatty(self._stream) else None

    def _make_bar(self) -> Any:
        try:
            from tqdm import tqdm
        except ImportError:
            note(_HINT)
            return None
        return tqdm(total=self.total, initial=self.done, desc=self.label, unit=self.unit, file=self._stream,
                    dynamic_ncols=True, mininterval=0.2, smoothing=0.1, leave=True)

    @property
    def uses_bar(self) -> bool:
        return self._bar is not None

    def advance(self, delivered: int = 0, failed: int = 0, other: int = 0) -> None:
        """Count newly resolved events (``other``: resolved without being sent, e.g. blank lines)."""
        self.delivered += delivered
        self.failed += failed
        count = delivered + failed + other
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        else:
            self.tick()

    def set_status(self, status: str) -> None:
        """A word on what holds things up (``ODP answers HTTP 503, retrying``); "" clears it."""
        if status == self.status:
            return
        self.status = status
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=True)

    def warn(self, message: str) -> None:
        """A warning line on stderr that does not break the bar."""
        if self._bar is not None:
            self._bar.write(f"{PROG}: warning: {message}", file=self._stream)
        else:
            warn(message)

    def tick(self) -> None:
        """Show progress if it is time to (call it now and then while waiting). Non-blocking."""
        if self._bar is not None:
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval:
            self._print_line(now)

    def close(self) -> None:
        """End the display: the bar's last state, or a last line if lines were printed."""
        if self._bar is not None:
            if self.total is not None and self._bar.n != self.total:
                self._bar.total = self._bar.n  # the total was an estimate
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.close()
            self._bar = None
        elif self._lines:
            self._print_line(time.monotonic())

    def rate(self) -> float:
        """Events resolved per second in this run."""
        return (self.done - self._start_done) / max(time.monotonic() - self._started, 1e-6)

    def _postfix(self) -> str:
        text = f"delivered={self.delivered:,}, failed={self.failed:,}"
        return f"{text}, {self.status}" if self.status else text

    def _print_line(self, now: float) -> None:
        self._last_line = now
        self._lines += 1
        rate = self.rate()
        if self.total:
            shown_total = max(self.total, self.done)
            where = f"{self.done:,}/{shown_total:,} {self.unit}s ({100 * self.done // max(shown_total, 1)}%)"
        else:
            where = f"{self.done:,} {self.unit}s"
        line = (f"{PROG}: {self.label}: {where}, {self.delivered:,} delivered, {self.failed:,} failed, "
                f"{rate:,.0f} {self.unit}s/s")
        if self.total and rate > 0 and self.done < self.total:
            line += f", ETA {duration((self.total - self.done) / rate)}"
        if self.status:
            line += f" ({self.status})"
        with contextlib.suppress(BrokenPipeError, ValueError):
            print(line, file=self._stream, flush=True)


def duration(value: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    whole = round(value)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
