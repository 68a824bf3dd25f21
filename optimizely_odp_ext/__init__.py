"""optimizely-odp-ext: ODP events for the official Optimizely Python SDK, delivered.

Swap ``from optimizely.optimizely import Optimizely`` for
``from optimizely_odp_ext import OdpOptimizely``; the rest of your code stays.
"""

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
