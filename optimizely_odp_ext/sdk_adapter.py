"""What optimizely-sdk 5.x's own ``OdpManager`` sees as its event manager.

The 5.x base client builds an ``OdpManager`` that would start its own ``OdpThread``.
``OdpOptimizely`` hands it this adapter instead, so the ODP events the base SDK
sends itself (``identified`` for a user context) go through the one manager of the
client. It implements all six methods the SDK calls in one place or another:
``is_running``, ``start``, ``send_event``, ``identify_user``, ``update_config``, ``stop``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizely_odp_ext.client import OdpOptimizely

IDENTIFIED_ACTION = "identified"


class SdkEventManagerAdapter:
    """Forwards the 5.x SDK's ODP calls to an ``OdpOptimizely`` (held weakly)."""

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

    def send_event(self, type: str, action: str, identifiers: dict[str, str],
                   data: dict[str, Any] | None) -> None:
        client = self._client()
        if client is not None:
            client.send_odp_event(action, identifiers, type, data)

    def identify_user(self, identifiers: dict[str, str]) -> None:
        """As optimizely-sdk 5.x: an ``identified`` event links two or more identifiers."""
        client = self._client()
        if client is None:
            return
        valid = {key: value for key, value in identifiers.items() if value}
        if len(valid) < 2:
            client.logger.debug("ODP identify event is not dispatched (fewer than 2 valid identifiers).")
            return
        client.send_odp_event(IDENTIFIED_ACTION, valid)
