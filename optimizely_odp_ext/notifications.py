"""ODP outcomes announced through the SDK's notification center.

The SDK's ``NotificationCenter`` only knows its own notification types, so
``OdpOptimizely`` creates an :class:`OdpNotificationCenter` (a subclass that also
knows the types below) unless you pass a notification center of your own; pass an
``OdpNotificationCenter`` to hear ODP outcomes then. DECISION, TRACK, LOG_EVENT and
OPTIMIZELY_CONFIG_UPDATE listeners work exactly as before.

Listener arguments:

- ``ODP_BATCH_DELIVERED``: ``host: str, event_count: int, status: int``
- ``ODP_BATCH_FAILED`` (it will be retried): ``host: str, event_count: int, status: int, retry_in: float``
  (``status`` 0 for a network error)
- ``ODP_EVENTS_DROPPED``: ``reason: str, event_count: int`` with ``reason`` a
  :class:`~optimizely_odp_ext.result.DiscardReason` value

Listeners run on the sender's threads: keep them short; an exception in one is logged.
"""

from __future__ import annotations

from typing import Any, Callable

from optimizely.notification_center import NotificationCenter

ODP_BATCH_DELIVERED = "ODP_BATCH_DELIVERED:host, event_count, status"
ODP_BATCH_FAILED = "ODP_BATCH_FAILED:host, event_count, status, retry_in"
ODP_EVENTS_DROPPED = "ODP_EVENTS_DROPPED:reason, event_count"
ODP_NOTIFICATION_TYPES = (ODP_BATCH_DELIVERED, ODP_BATCH_FAILED, ODP_EVENTS_DROPPED)

Note = tuple[str, tuple[Any, ...]]


class OdpNotificationCenter(NotificationCenter):
    """A ``NotificationCenter`` that also accepts listeners for the ODP notification types."""

    def __init__(self, logger: Any = None) -> None:
        super().__init__(logger)
        for kind in ODP_NOTIFICATION_TYPES:
            self.notification_listeners[kind] = []

    def add_notification_listener(self, notification_type: str, notification_callback: Callable[..., None]) -> int:
        if notification_type not in ODP_NOTIFICATION_TYPES:
            return int(super().add_notification_listener(notification_type, notification_callback))
        listeners = self.notification_listeners[notification_type]
        if any(listener == notification_callback for _, listener in listeners):
            self.logger.error("Listener has already been added. Not adding it again.")
            return -1
        listener_id = int(self.listener_id)
        listeners.append((listener_id, notification_callback))
        self.listener_id += 1
        return listener_id

    def clear_notification_listeners(self, notification_type: str) -> None:
        if notification_type in ODP_NOTIFICATION_TYPES:
            self.notification_listeners[notification_type] = []
        else:
            super().clear_notification_listeners(notification_type)

    def send_notifications(self, notification_type: str, *args: Any) -> None:
        if notification_type not in ODP_NOTIFICATION_TYPES:
            super().send_notifications(notification_type, *args)
            return
        for _, callback in list(self.notification_listeners.get(notification_type, ())):
            try:
                callback(*args)
            except Exception:
                self.logger.exception(f'Unknown problem when sending "{notification_type}" type notification.')


def fire(center: Any, notes: list[Note]) -> None:
    """Send the collected notes, if the center knows ODP notifications. Never raises."""
    if not notes or not isinstance(center, OdpNotificationCenter):
        return
    for kind, args in notes:
        center.send_notifications(kind, *args)
