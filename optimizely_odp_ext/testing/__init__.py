"""Tools for testing ODP instrumentation on this machine: a local ODP-compatible
collector, a datafile server and an event dispatcher that keep traffic on 127.0.0.1."""

from optimizely_odp_ext.testing.collector import OdpCollector, RecordedRequest
from optimizely_odp_ext.testing.local import DatafileServer, RecordingEventDispatcher, sample_datafile

__all__ = ["DatafileServer", "OdpCollector", "RecordedRequest", "RecordingEventDispatcher", "sample_datafile"]
