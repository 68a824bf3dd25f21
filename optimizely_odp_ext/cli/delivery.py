"""What became of one event sent through the session's client (``send`` and ``doctor --send-test-event``).

One verdict: the server's answers are listened to until the wait for delivery ends; what
the command then gives up when it closes the client is part of that verdict ("given up as
the command ends"), not another answer from the server.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from optimizely_odp_ext.cli.common import plural, round_seconds, seconds
from optimizely_odp_ext.cli.session import Session
from optimizely_odp_ext.notifications import (
    ODP_BATCH_DELIVERED,
    ODP_BATCH_FAILED,
    ODP_EVENTS_DROPPED,
    OdpNotificationCenter,
)
from optimizely_odp_ext.result import SendResult

_REQUEST_FAILED = re.compile(r"^ODP request failed \((?P<detail>.*?)\); ")
"""The manager's warning for a failed request; its detail (``network error: ConnectionError``)."""


class Delivery:
    """What happened to one event: the client's result, then ODP's answers."""

    def __init__(self) -> None:
        self.result: SendResult = SendResult(False)
        self.answers: list[str] = []
        self.delivered = False
        self.problem = ""
        self.seconds = 0.0
        self.failed_attempts = 0
        self.host = ""
        self._listening = True
        self._lock = threading.Lock()

    def listen(self, center: OdpNotificationCenter) -> None:
        center.add_notification_listener(ODP_BATCH_DELIVERED, self._on_delivered)
        center.add_notification_listener(ODP_BATCH_FAILED, self._on_failed)
        center.add_notification_listener(ODP_EVENTS_DROPPED, self._on_dropped)

    def stop_listening(self) -> None:
        """The verdict is made: later notifications (the command giving up at close) are not answers."""
        with self._lock:
            self._listening = False

    def _on_delivered(self, host: str, count: int, status: int) -> None:
        self._answer(f"HTTP {status} from {host} ({plural(count, 'event')} delivered)")

    def _on_failed(self, host: str, count: int, status: int, retry_in: float) -> None:
        what = f"HTTP {status}" if status else "no answer (network error)"
        with self._lock:
            if self._listening:
                self.failed_attempts += 1
                self.host = host
        self._answer(f"{what} from {host}; retrying in {seconds(retry_in)}")

    def _on_dropped(self, reason: str, count: int) -> None:
        self._answer(f"{plural(count, 'event')} given up ({reason})")

    def _answer(self, line: str) -> None:
        with self._lock:
            if self._listening:
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
    mark = session.recent.count
    started = time.monotonic()
    delivery.result = session.client.send_odp_event(action, identifiers, type, data)
    if not delivery.result:
        delivery.stop_listening()
        delivery.problem = f"{delivery.result.reason}: {delivery.result.message}"
        return delivery
    finished = session.client.flush(session.timeout)
    delivery.stop_listening()
    delivery.seconds = time.monotonic() - started
    stats = session.client.odp_stats()
    delivery.delivered = stats.get("delivered", 0) >= 1
    if not delivery.delivered:
        delivery.problem = _verdict(session, delivery, stats, finished, mark)
    return delivery


def _verdict(session: Session, delivery: Delivery, stats: dict[str, Any], finished: bool, mark: int) -> str:
    """Why the event was not delivered, in one line that agrees with what was printed."""
    if finished:  # resolved without a delivery: ODP refused it, or it expired
        dropped = ", ".join(str(reason) for reason in stats.get("dropped") or {})
        said = session.recent.last(logging.ERROR, mark) or session.recent.last(logging.WARNING, mark)
        return "dropped" + (f" ({dropped})" if dropped else "") + (f": {said}" if said else "")
    warning = session.recent.last(logging.WARNING, mark)
    found = _REQUEST_FAILED.match(warning)
    last = f" (last: {round_seconds(found.group('detail'))})" if found else ""
    if delivery.failed_attempts:
        tried = f"{plural(delivery.failed_attempts, 'attempt')} to {delivery.host} failed{last}"
    else:
        tried = "no answer from ODP yet"
    return f"not acknowledged within {seconds(session.timeout)}: {tried}; given up as the command ends"
