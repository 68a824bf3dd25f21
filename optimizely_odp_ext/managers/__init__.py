"""Event managers: the interface and the ones this package ships (imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_odp_ext._lazy import lazy_exports
from optimizely_odp_ext.managers.base import EventManager

if TYPE_CHECKING:
    from optimizely_odp_ext.managers.batch import BatchEventManager
    from optimizely_odp_ext.managers.sync import SyncEventManager

__all__ = ["BatchEventManager", "EventManager", "SyncEventManager"]

__getattr__, __dir__ = lazy_exports(__name__, {"BatchEventManager": "optimizely_odp_ext.managers.batch",
                                               "SyncEventManager": "optimizely_odp_ext.managers.sync"},
                                    __all__, globals())
