"""What became of one event sent through the session's client (``send`` and ``doctor --send-test-event``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from optimizely_odp_ext.cli.common import plural
from optimizely_odp_ext.cli.session import Session
from optimizely_odp_ext.notifications import (
    ODP_BATCH_DELIVERED,
    ODP_BATCH_FAILED,
    ODP_EVENTS_DROPPED,
    OdpNotificationCenter,
)
from optimizely_odp_ext.result import SendResult


class Delivery:
    """What happened to one event: the client's result, then ODP's answers."""

    def __init__(self) -> None:
        self.result: SendResult = SendResult(False)
        self.answers: list[str] = []
        self.delivered = False
        self.problem = ""
        self.seconds = 0.0
        self._lock = threading.Lock()

    def listen(self, center: OdpNotificationCenter) -> None:
        center.add_notification_listener(ODP_BATCH_DELIVERED, self._on_delivered)
        center.add_notification_listener(ODP_BATCH_FAILED, self._on_failed)
        center.add_notification_listener(ODP_EVENTS_DROPPED, self._on_dropped)

    def _on_delivered(self, host: str, count: int, status: int) -> None:
        self._answer(f"HTTP {status} from {host} ({plural(count, 'event')} delivered)")

    def _on_failed(self, host: str, count: int, status: int, retry_in: float) -> None:
        what = f"HTTP {status}" if status else "no answer (network error)"
        self._answer(f"{what} from {host}; retrying in {retry_in:.1f}s")

    def _on_dropped(self, reason: str, count: int) -> None:
        self._answer(f"{plural(count, 'event')} dropped ({reason})")

    def _answer(self, line: str) -> None:
        with self._lock:
            self.answers.append(line)

    def report(self, indent: str = "") -> None:
        """Print the result and the answers on stdout."""
        result = self.result
        print(f"{indent}result: accepted" if result else f"{indent}result: discarded ({result.reason}) "
              f"{result.message}")
        with self._lock:
            for line in self.answers:
                print(f"{indent}server: {line}")
        if self.delivered:
            print(f"{indent}delivered in {self.seconds:.2f}s")


def deliver(session: Session, action: str, identifiers: dict[str, str], type: str,
            data: dict[str, Any] | None) -> Delivery:
    """Send one event with ``session.client``, flush, and tell what became of it. Blocks."""
    delivery = Delivery()
    delivery.listen(session.center)
    mark = len(session.recent.messages)
    started = time.monotonic()
    delivery.result = session.client.send_odp_event(action, identifiers, type, data)
    if not delivery.result:
        delivery.problem = f"{delivery.result.reason}: {delivery.result.message}"
        return delivery
    finished = session.client.flush(session.timeout)
    delivery.seconds = time.monotonic() - started
    stats = session.client.odp_stats()
    delivery.delivered = stats.get("delivered", 0) >= 1
    if not delivery.delivered:
        said = session.recent.last(logging.ERROR, mark) or session.recent.last(logging.WARNING, mark)
        dropped = ", ".join(f"{reason}" for reason in stats.get("dropped") or {})
        if not finished:
            delivery.problem = f"no acknowledgement within {session.timeout:g}s"
        else:
            delivery.problem = "dropped" + (f" ({dropped})" if dropped else "")
        if said:
            delivery.problem += f": {said}"
    return delivery
