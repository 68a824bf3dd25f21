"""pytest fixtures for testing ODP instrumentation against a local collector.

Installed with the package and loaded by pytest through the ``pytest11`` entry point,
so the fixtures are available in every test without a ``conftest.py``:

- ``odp_collector``: a started :class:`~optimizely_odp_ext.testing.OdpCollector` on
  127.0.0.1 (any ``x-api-key`` accepted), stopped after the test.
- ``odp_datafile``: a small valid datafile (a ``dict``) whose ODP integration points at
  that collector (see :func:`~optimizely_odp_ext.testing.sample_datafile`).
- ``odp_client``: an :class:`~optimizely_odp_ext.OdpOptimizely` built from that datafile,
  with a :class:`~optimizely_odp_ext.testing.RecordingEventDispatcher` so the base SDK's
  impression and conversion events stay in memory; closed after the test.

Example::

    def test_checkout_sends_purchase(odp_client, odp_collector):
        checkout(odp_client, user_id="u1")
        assert odp_client.flush(5)
        assert odp_collector.events[0]["action"] == "purchase"

Nothing leaves 127.0.0.1. This module is imported in every pytest run where the package
is installed, so it imports nothing heavy at import time and has no side effects: the
collector, the datafile helpers and the SDK are imported only when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from optimizely_odp_ext.client import OdpOptimizely
    from optimizely_odp_ext.testing.collector import OdpCollector

ODP_CLIENT_CLOSE_TIMEOUT = 5.0
"""Seconds the ``odp_client`` fixture's teardown waits to deliver what the test sent."""


@pytest.fixture
def odp_collector() -> Iterator[OdpCollector]:
    """A started local ODP collector (``/v3/events`` on 127.0.0.1, a free port).

    It accepts any API key, records every event (``.events``, ``.wait_for_events(n)``)
    and is stopped after the test. Starting it does not block beyond binding the port.
    """
    from optimizely_odp_ext.testing.collector import OdpCollector

    collector = OdpCollector(api_key=None).start()
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture
def odp_datafile(odp_collector: OdpCollector) -> dict[str, Any]:
    """A small valid datafile whose ODP integration is ``odp_collector`` (key ``test-odp-key``).

    A fresh dict per test: change it freely (e.g. drop ``integrations``) before use.
    """
    from optimizely_odp_ext.testing.local import sample_datafile

    return sample_datafile(odp_collector.url, "test-odp-key")


@pytest.fixture
def odp_client(odp_datafile: dict[str, Any]) -> Iterator[OdpOptimizely]:
    """An ``OdpOptimizely`` built from ``odp_datafile``, ODP events going to ``odp_collector``.

    The base SDK's own events go to a ``RecordingEventDispatcher`` (available as
    ``odp_client.event_dispatcher``), never to Optimizely. After the test the client is
    closed, which blocks up to :data:`ODP_CLIENT_CLOSE_TIMEOUT` seconds to deliver what
    was accepted. Call ``odp_client.flush(timeout)`` in the test before asserting on
    ``odp_collector.events``.
    """
    import json

    from optimizely_odp_ext.client import OdpOptimizely
    from optimizely_odp_ext.testing.local import RecordingEventDispatcher

    client = OdpOptimizely(datafile=json.dumps(odp_datafile), event_dispatcher=RecordingEventDispatcher())
    try:
        yield client
    finally:
        client.close(ODP_CLIENT_CLOSE_TIMEOUT)
