"""What every manager (and client) needs from the process: a logger before it is started, delivery at
interpreter exit, and a fresh start in a forked child."""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import weakref
from typing import Any, Protocol


class NullLogger:
    """Logs nothing: a manager's logger until the client starts it with the SDK's."""

    def debug(self, *args: Any) -> None: ...
    def info(self, *args: Any) -> None: ...
    def warning(self, *args: Any) -> None: ...
    def error(self, *args: Any) -> None: ...


class ProcessBound(Protocol):
    def at_exit(self, started: float) -> None:
        """Deliver what is pending within the manager's ``exit_timeout`` from ``started`` (the
        ``time.monotonic()`` at which the interpreter's exit began: every manager's time counts
        from it, so the exit waits the longest ``exit_timeout``, not their sum); never raise."""

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child: the parent delivers what it accepted."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_first: weakref.WeakSet[Any] = weakref.WeakSet()
"""Objects whose exit comes before the managers': clients, which hand their held events over."""


def track(manager: ProcessBound, *, exits_first: bool = False) -> None:
    """Have ``manager`` closed at interpreter exit and reset in a forked child, while it lives."""
    (_first if exits_first else _live).add(manager)


def untrack(manager: ProcessBound) -> None:
    _live.discard(manager)
    _first.discard(manager)


def _at_exit() -> None:
    started = time.monotonic()
    for tracked in (*_first, *_live):
        with contextlib.suppress(Exception):  # exit must never fail because of us
            tracked.at_exit(started)


def _after_fork_in_child() -> None:
    for tracked in (*_first, *_live):
        tracked.after_fork_in_child()


def exit_time_left(started: float, exit_timeout: float) -> float:
    """What is left of ``exit_timeout`` counted from the exit's ``started``."""
    return max(0.0, started + exit_timeout - time.monotonic())


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
