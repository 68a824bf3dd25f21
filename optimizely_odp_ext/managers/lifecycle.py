"""What every manager needs from the process: a logger before it is started, delivery at
interpreter exit, and a fresh start in a forked child."""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Any, Protocol


class NullLogger:
    """Logs nothing: a manager's logger until the client starts it with the SDK's."""

    def debug(self, *args: Any) -> None: ...
    def info(self, *args: Any) -> None: ...
    def warning(self, *args: Any) -> None: ...
    def error(self, *args: Any) -> None: ...


class ProcessBound(Protocol):
    def at_exit(self) -> None:
        """Deliver what is pending within the manager's ``exit_timeout``; never raise."""

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child: the parent delivers what it accepted."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def track(manager: ProcessBound) -> None:
    """Have ``manager`` closed at interpreter exit and reset in a forked child, while it lives."""
    _live.add(manager)


def untrack(manager: ProcessBound) -> None:
    _live.discard(manager)


def _at_exit() -> None:
    for manager in list(_live):
        with contextlib.suppress(Exception):  # exit must never fail because of us
            manager.at_exit()


def _after_fork_in_child() -> None:
    for manager in list(_live):
        manager.after_fork_in_child()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
