"""Tools for testing ODP instrumentation on this machine: a local ODP-compatible
collector, a datafile server and an event dispatcher that keep traffic on 127.0.0.1, and a
throwaway ``redis-server`` for the Redis spool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_odp_ext._lazy import lazy_exports

if TYPE_CHECKING:
    from optimizely_odp_ext.testing.collector import OdpCollector, RecordedRequest
    from optimizely_odp_ext.testing.local import DatafileServer, RecordingEventDispatcher, sample_datafile
    from optimizely_odp_ext.testing.redis_server import RedisServer, RedisServerError

_EXPORTS = {
    "OdpCollector": "optimizely_odp_ext.testing.collector",
    "RecordedRequest": "optimizely_odp_ext.testing.collector",
    "DatafileServer": "optimizely_odp_ext.testing.local",
    "RecordingEventDispatcher": "optimizely_odp_ext.testing.local",
    "sample_datafile": "optimizely_odp_ext.testing.local",
    "RedisServer": "optimizely_odp_ext.testing.redis_server",
    "RedisServerError": "optimizely_odp_ext.testing.redis_server",
}
"""Imported on first use: the pytest plugin beside this package loads in every test run."""


__all__ = [
    "DatafileServer",
    "OdpCollector",
    "RecordedRequest",
    "RecordingEventDispatcher",
    "RedisServer",
    "RedisServerError",
    "sample_datafile",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())
