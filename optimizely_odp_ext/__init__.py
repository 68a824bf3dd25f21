"""optimizely-odp-ext: ODP events for the official Optimizely Python SDK, delivered.

Swap ``from optimizely.optimizely import Optimizely`` for
``from optimizely_odp_ext import OdpOptimizely``; the rest of your code stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_odp_ext._lazy import lazy_exports

if TYPE_CHECKING:
    from optimizely_odp_ext.client import OdpOptimizely
    from optimizely_odp_ext.event import InvalidEventError, OdpEvent
    from optimizely_odp_ext.integration import IntegrationState, OdpIntegration
    from optimizely_odp_ext.managers import BatchEventManager, EventManager, SyncEventManager
    from optimizely_odp_ext.notifications import (
        ODP_BATCH_DELIVERED,
        ODP_BATCH_FAILED,
        ODP_EVENTS_DROPPED,
        OdpNotificationCenter,
    )
    from optimizely_odp_ext.result import DiscardReason, SendResult
    from optimizely_odp_ext.settings import SettingError

__version__ = "0.1.0"

_EXPORTS = {
    "OdpOptimizely": "optimizely_odp_ext.client",
    "InvalidEventError": "optimizely_odp_ext.event",
    "OdpEvent": "optimizely_odp_ext.event",
    "IntegrationState": "optimizely_odp_ext.integration",
    "OdpIntegration": "optimizely_odp_ext.integration",
    "BatchEventManager": "optimizely_odp_ext.managers",
    "EventManager": "optimizely_odp_ext.managers",
    "SyncEventManager": "optimizely_odp_ext.managers",
    "ODP_BATCH_DELIVERED": "optimizely_odp_ext.notifications",
    "ODP_BATCH_FAILED": "optimizely_odp_ext.notifications",
    "ODP_EVENTS_DROPPED": "optimizely_odp_ext.notifications",
    "OdpNotificationCenter": "optimizely_odp_ext.notifications",
    "DiscardReason": "optimizely_odp_ext.result",
    "SendResult": "optimizely_odp_ext.result",
    "SettingError": "optimizely_odp_ext.settings",
}
"""Public name -> the module that defines it. Imported on first use, so that importing a
submodule (the pytest plugin, the CLI) does not load the SDK until it is needed."""


__all__ = [
    "ODP_BATCH_DELIVERED",
    "ODP_BATCH_FAILED",
    "ODP_EVENTS_DROPPED",
    "BatchEventManager",
    "DiscardReason",
    "EventManager",
    "IntegrationState",
    "InvalidEventError",
    "OdpEvent",
    "OdpIntegration",
    "OdpNotificationCenter",
    "OdpOptimizely",
    "SendResult",
    "SettingError",
    "SyncEventManager",
    "__version__",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())
