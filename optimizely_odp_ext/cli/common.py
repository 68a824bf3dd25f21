"""What every ``optimizely-odp`` command shares: exit codes, one-line messages on stderr,
how numbers and library messages are shown, and argument parsing.

The key is shown only through :func:`optimizely_odp_ext.integration.mask_key`, re-exported
here as :func:`masked` so every command masks it the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from optimizely_odp_ext.integration import mask_key

if TYPE_CHECKING:
    from optimizely_odp_ext.event import Scalar

PROG = "optimizely-odp"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
EXIT_BROKEN_PIPE = 128 + 13
"""stdout's reader went away (``| head``): the status a shell shows for a tool ended by SIGPIPE."""
DEFAULT_TIMEOUT = 10.0
WATCHER_JOIN_TIMEOUT = 5.0
"""Seconds a :class:`StopRequest` waits at its end for its watcher thread (which is quick)."""

masked = mask_key


class CliError(Exception):
    """An expected failure: reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _stderr(line: str) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # stderr's reader went away, or it is closed
        print(line, file=sys.stderr, flush=True)


def error(message: str) -> None:
    _stderr(f"{PROG}: error: {message}")


def warn(message: str) -> None:
    _stderr(f"{PROG}: warning: {message}")


def note(message: str) -> None:
    _stderr(f"{PROG}: {message}")


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def seconds(value: float) -> str:
    """A duration as the CLI shows it: ``0.2s``, ``1.25s``, ``30s`` (never 17 digits)."""
    return f"{round(value, 2):g}s"


_LONG_DURATION = re.compile(r"(?<![\d.])(\d+\.\d{3,})(?=\s?s\b)")


def round_seconds(text: str) -> str:
    """A library message with its durations rounded: ``(timeout 0.19999351700005263s)`` ->
    ``(timeout 0.2s)``. Numbers that are not seconds are left alone."""
    return _LONG_DURATION.sub(lambda found: f"{round(float(found.group(1)), 2):g}", text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


_SCALAR_STARTS = frozenset('-0123456789tfn" \t\r\n')
"""The characters a JSON number, true, false, null or string may start with (after blanks)."""


def parse_value(text: str) -> Scalar:
    """A ``--data`` value (or a CSV ``data.*`` cell): JSON ``true``/``false``/``null``, a finite
    number or a quoted string when it is one, else the text itself (``007`` and ``NaN`` stay
    text). Non-blocking."""
    try:
        value = json.loads(text, parse_constant=not_json)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def not_json(name: str) -> NoReturn:
    """``parse_constant`` for ``json.loads``: ``NaN`` and ``Infinity`` are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def pairs(texts: Sequence[str], option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments of ``option`` as pairs; a usage error for any other form."""
    result = []
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise CliError(f"{option} expects KEY=VALUE, not {text!r}", EXIT_USAGE)
        result.append((key, value))
    return result


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the process like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequest:
    """Ctrl-C or SIGTERM asks a long command to stop cleanly: the first signal sets
    :attr:`requested` (the command finishes what is under way and saves its state) and calls
    ``on_request``; a second one raises ``KeyboardInterrupt`` at once. Use as a context manager
    on the main thread (elsewhere it only offers :attr:`requested`).

    The signal handler takes no lock: it only writes the signal's number to a pipe, and a
    watcher thread sets :attr:`requested` and calls ``on_request``. A handler runs in the main
    thread between two bytecodes, possibly while that thread holds the very lock that
    ``Event.set()`` takes (inside ``requested.wait()``, say): it would wait for itself for ever
    (Python's signal docs warn of it; a relay test hung so, once in a few hundred SIGTERMs).
    """

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.requested = threading.Event()
        self.name = ""
        """The name of the signal that asked for the stop ("SIGTERM"), once one did."""
        self._on_request = on_request
        self._previous: dict[int, Any] = {}
        self._signals = 0
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        assert self._pipe is not None
        with contextlib.suppress(OSError):  # a full pipe: a stop is on its way already
            os.write(self._pipe[1], bytes([signum]))

    def _watch(self, read_end: int) -> None:
        try:
            while number := os.read(read_end, 1):  # b"": the context ended
                self.name = signal.Signals(number[0]).name
                self.requested.set()
                if self._on_request is not None:
                    self._on_request()
        finally:
            os.close(read_end)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._watcher = threading.Thread(target=self._watch, args=(self._pipe[0],), name="stop-request",
                                             daemon=True)
            self._watcher.start()
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self._pipe is not None:
            os.close(self._pipe[1])  # the watcher reads what is left, then the end of the pipe
            self._pipe = None
            assert self._watcher is not None
            self._watcher.join(WATCHER_JOIN_TIMEOUT)
