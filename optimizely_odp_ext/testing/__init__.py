"""Tools for testing ODP instrumentation on this machine: a local ODP-compatible
collector, a datafile server and an event dispatcher that keep traffic on 127.0.0.1."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizely_odp_ext.testing.collector import OdpCollector, RecordedRequest
    from optimizely_odp_ext.testing.local import DatafileServer, RecordingEventDispatcher, sample_datafile

_EXPORTS = {
    "OdpCollector": "optimizely_odp_ext.testing.collector",
    "RecordedRequest": "optimizely_odp_ext.testing.collector",
    "DatafileServer": "optimizely_odp_ext.testing.local",
    "RecordingEventDispatcher": "optimizely_odp_ext.testing.local",
    "sample_datafile": "optimizely_odp_ext.testing.local",
}
"""Imported on first use: the pytest plugin beside this package loads in every test run."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["DatafileServer", "OdpCollector", "RecordedRequest", "RecordingEventDispatcher", "sample_datafile"]
