"""The SDK logger the CLI gives its client: what it said, in one readable line.

Nothing global is configured: the logger is not in ``logging``'s registry. ``--verbose``
adds a stderr handler (durations rounded); without it only warnings and errors are kept,
to explain a failure. The base SDK reports a failed datafile fetch only through its
logger (an ERROR from the polling thread), so :class:`RecentMessages` lets a waiter
wake up on it instead of waiting out the timeout.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import deque
from typing import NamedTuple

from optimizely_odp_ext.cli.common import PROG, round_seconds


class Message(NamedTuple):
    number: int
    """1 for the first message kept, 2 for the next, ..."""
    level: int
    text: str
    thread: int | None


class RecentMessages(logging.Handler):
    """Keeps the SDK's last warnings and errors; :attr:`changed` is notified on each one.
    Thread-safe."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.changed = threading.Condition()
        self._messages: deque[Message] = deque(maxlen=100)
        self._count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            self.handleError(record)
            return
        with self.changed:
            self._count += 1
            self._messages.append(Message(self._count, record.levelno, text, record.thread))
            self.changed.notify_all()

    def poke(self) -> None:
        """Wake the waiters (something else they wait for happened)."""
        with self.changed:
            self.changed.notify_all()

    @property
    def count(self) -> int:
        """How many messages were kept so far: a mark for :meth:`last` (``since``)."""
        with self.changed:
            return self._count

    def last(self, level: int = logging.ERROR, since: int = 0, latest: bool = True) -> str:
        """The latest (or earliest) message at ``level`` or above after mark ``since``, or ""."""
        with self.changed:
            messages = [m for m in self._messages if m.number > since and m.level >= level]
        if not messages:
            return ""
        return round_seconds((messages[-1] if latest else messages[0]).text)

    def errors(self) -> list[str]:
        """Every ERROR kept, oldest first."""
        with self.changed:
            return [message.text for message in self._messages if message.level >= logging.ERROR]

    def first_error_from(self, thread: int | None) -> str:
        """The first ERROR logged by ``thread`` (any thread when None), or ""."""
        with self.changed:
            for message in self._messages:
                if message.level >= logging.ERROR and (thread is None or message.thread == thread):
                    return message.text
        return ""


class _RoundingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return round_seconds(super().format(record))


def sdk_logger(verbose: bool) -> tuple[logging.Logger, RecentMessages]:
    """A logger for the SDK that is not in logging's registry (nothing global is configured)."""
    logger = logging.Logger(PROG, logging.DEBUG if verbose else logging.WARNING)
    recent = RecentMessages()
    logger.addHandler(recent)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_RoundingFormatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger, recent


_FETCH_FAILED = re.compile(r"^Fetching datafile from (?P<url>\S+) failed\. Error: (?P<error>.*)$", re.DOTALL)
_HTTP_ERROR = re.compile(r"\b(?P<status>\d{3}) (?:Client|Server) Error: (?P<reason>.*?) for url")
_TOO_MANY = re.compile(r"too many (?P<status>\d{3}) error responses")
_ERRNO = re.compile(r"\[Errno -?\d+\] (?P<reason>[^'\")\]]+)")


def fetch_failure(message: str) -> str:
    """The SDK's ERROR about a datafile it could not get, as one short phrase.

    ``Fetching datafile from URL failed. Error: HTTPConnectionPool(...): Max retries exceeded
    ... [Errno 111] Connection refused'))`` -> ``connection refused``. Any other message (an
    invalid datafile) comes back as it is.
    """
    found = _FETCH_FAILED.match(message.strip())
    if found is None:
        return round_seconds(message.strip())
    text = found.group("error")
    if (http := _HTTP_ERROR.search(text)) is not None:
        return f"HTTP {http.group('status')} {http.group('reason')}".strip()
    if (retried := _TOO_MANY.search(text)) is not None:
        return f"HTTP {retried.group('status')} (after the SDK's retries)"
    if "Failed to resolve" in text or "Name or service not known" in text or "getaddrinfo" in text:
        causes: list[str] = _ERRNO.findall(text)
        return "cannot resolve the host name" + (f" ({causes[-1].strip()})" if causes else "")
    if "timed out" in text.lower():
        return "timed out"
    errno: list[str] = _ERRNO.findall(text)
    if errno:
        return errno[-1].strip().lower()
    return text if len(text) <= 160 else text[:157] + "..."
