"""Where optimizely-sdk 5.x's own ``OdpManager`` meets this package's client.

- :class:`SdkEventManagerAdapter` is what the 5.x base client sees as its ODP event
  manager by default, so the ODP events the base SDK sends itself (``identified`` for a
  user context) go through the one manager of the client, and no ``OdpThread`` starts. It
  implements all six methods the SDK calls in one place or another: ``is_running``,
  ``start``, ``send_event``, ``identify_user``, ``update_config``, ``stop``; and both shapes
  of ``identify_user`` (a user id string on 5.0 to 5.5, a dict of identifiers on 5.6+).
- :class:`OfficialEventManagerBridge` is the other way round: a caller's own official-style
  event manager (``OptimizelySdkSettings(odp_event_manager=...)``) behind our
  validation. The base client validates and drives it as it always did (``start``,
  ``update_config``, ``identify_user``, ``stop``); events accepted by ``send_odp_event`` reach
  its ``send_event``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE, USER_ID_KEY, OdpEvent
from optimizely_odp_ext.integration import IntegrationState
from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.result import ACCEPTED, SendResult

if TYPE_CHECKING:
    from optimizely_odp_ext.client import OdpOptimizely

IDENTIFIED_ACTION = "identified"


class SdkEventManagerAdapter:
    """Forwards the 5.x SDK's ODP calls to an ``OdpOptimizely`` (held weakly). Thread-safe;
    nothing here blocks."""

    def __init__(self, client: OdpOptimizely) -> None:
        self._client = weakref.ref(client)
        self.odp_config: Any = None

    @property
    def is_running(self) -> bool:
        client = self._client()
        return client is not None and not client._odp_closed

    def start(self, odp_config: Any) -> None:
        """The integration is followed by the client itself; nothing to start."""
        self.odp_config = odp_config

    def update_config(self) -> None:
        """The client follows datafile updates itself."""

    def stop(self) -> None:
        """The client's ``close`` stops its manager; the base ``close`` calling this is a no-op."""

    def flush(self) -> None:
        client = self._client()
        if client is not None:
            client.flush(timeout=0)

    def send_event(self, type: str, action: str, identifiers: dict[str, Any],
                   data: dict[str, Any] | None) -> None:
        client = self._client()
        if client is not None:
            client.send_odp_event(action, identifiers, type, data)

    def identify_user(self, user: str | dict[str, Any]) -> None:
        """An ``identified`` event, as the installed SDK release sends it.

        5.0 to 5.5 pass the user id: the event carries ``{"fs_user_id": user_id}``.
        5.6+ pass a dict: only non-empty identifiers count, and two or more are needed.
        Like the official event manager, nothing is sent unless ODP is integrated.
        """
        client = self._client()
        if client is None:
            return
        if client.odp_state is not IntegrationState.INTEGRATED:
            client.logger.debug("ODP identify event is not dispatched (ODP not integrated).")
            return
        if isinstance(user, dict):
            identifiers = {key: value for key, value in user.items() if value}
            if len(identifiers) < 2:
                client.logger.debug("ODP identify event is not dispatched (fewer than 2 valid identifiers).")
                return
        else:
            identifiers = {USER_ID_KEY: user}
        client.send_odp_event(IDENTIFIED_ACTION, identifiers, DEFAULT_EVENT_TYPE, None)


class OfficialEventManagerBridge(EventManager):
    """Hands events that passed our validation to a caller's official-style ODP event manager.

    That manager keeps doing what it did under the official client: the base client checks
    it (an invalid one makes the client invalid), starts it with the ODP config, tells it
    about updates, sends it ``identify_user`` and stops it at ``close``. ``send`` calls its
    ``send_event(type, action, identifiers, data)`` with copies (the ``fs_user_id`` key
    already normalised) and returns accepted: what happens next is that manager's business,
    and this bridge counts nothing delivered. Thread-safe as far as the wrapped manager is.
    """

    def __init__(self, official: Any) -> None:
        self.official = official

    def send(self, event: OdpEvent) -> SendResult:
        self.official.send_event(event.type, event.action, dict(event.identifiers), dict(event.data or {}))
        return ACCEPTED

    def flush(self, timeout: float | None = None) -> bool:
        """Asks the wrapped manager to flush (its ``flush()``, if it has one), without waiting."""
        flush = getattr(self.official, "flush", None)
        if callable(flush):
            flush()
        return True

    def close(self, timeout: float | None = None) -> bool:
        """The base client's ``close`` stops the wrapped manager, as it always did."""
        return True
