"""The interface between ``OdpOptimizely`` and whatever delivers its events."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.result import SendResult

DEFAULT_FLUSH_TIMEOUT = 30.0
"""Seconds ``flush()`` waits at most when given no timeout (OpenTelemetry's ``force_flush`` default)."""


def wait_limit(timeout: float | None, default: float) -> float:
    """The seconds a ``flush``/``close`` given ``timeout`` waits: None is ``default``; negative or
    NaN is 0; beyond the longest wait the platform's locks take (``threading.TIMEOUT_MAX``, about
    292 years; ``inf``), that longest wait."""
    if timeout is None:
        return default
    return min(max(0.0, timeout), threading.TIMEOUT_MAX)


class EventManager(ABC):
    """What ``OdpOptimizely.send_odp_event`` delegates to.

    The client validates every event and binds it to the ODP integration active when
    it was accepted (``event.integration``) before calling :meth:`send`; events sent
    before the datafile is known are held by the client and handed over once it is.

    To plug in your own delivery (say, an existing queue), subclass this and implement
    :meth:`send`; the rest have working defaults. Pass an instance as
    ``OdpOptimizely(..., odp_event_manager=...)``.
    """

    logger: Any = None
    notification_center: Any = None

    def start(self, *, logger: Any, notification_center: Any, integration: OdpIntegration | None) -> None:
        """Called once by the client with the SDK's logger and notification center and the
        integration known at that time (None while undetermined or not integrated).
        Must not block.
        """
        self.logger = logger
        self.notification_center = notification_center

    @abstractmethod
    def send(self, event: OdpEvent) -> SendResult:
        """Accept one valid event for delivery. Called on the application's thread: must be
        fast, thread-safe, must not block and must not raise. Return
        :data:`~optimizely_odp_ext.result.ACCEPTED` or a discarded result with its reason and
        message. A refusal is counted and logged by the client, not here.
        """

    def park(self, events: Sequence[OdpEvent]) -> int:
        """Keep events whose destination is not known (their datafile never came) for the next
        start, durably; return how many were kept. Called by the client's ``close``, before
        ``close``. The rest are given up, and counted, by the client. Default: keeps none.
        Blocks for the store's I/O; thread-safe."""
        return 0

    def integration_changed(self, integration: OdpIntegration | None) -> None:  # noqa: B027
        """The client learned the integration from a datafile (None: not integrated), right
        after ``start`` and on every change. Must not block. Events already accepted keep
        their own integration."""

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything accepted so far; True when it all was delivered or finally
        resolved within ``timeout`` seconds (None: :data:`DEFAULT_FLUSH_TIMEOUT`). Blocks up
        to ``timeout``; thread-safe."""
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what was accepted (within ``timeout``) and stop; idempotent. True when
        nothing accepted was left undelivered. Blocks; thread-safe."""
        return self.flush(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters, under the names ``OdpOptimizely.odp_stats()`` documents (``delivered``,
        ``dropped``, ``queued``, ...); the client adds its own. Non-blocking; thread-safe."""
        return {}
