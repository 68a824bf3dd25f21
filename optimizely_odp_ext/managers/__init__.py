"""Event managers: the interface and the ones this package ships."""

from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.managers.batch import BatchEventManager
from optimizely_odp_ext.managers.sync import SyncEventManager

__all__ = ["BatchEventManager", "EventManager", "SyncEventManager"]
