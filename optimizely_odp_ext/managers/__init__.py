"""Event managers: the interface and the ones this package ships."""

from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.managers.batch import BatchEventManager

__all__ = ["BatchEventManager", "EventManager"]
