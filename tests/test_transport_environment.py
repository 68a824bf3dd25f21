"""Settings read from the environment, as ``requests`` reads them (proxies, CA bundle): honoured,
and a change to them followed within ``transport.ENVIRONMENT_TTL``."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from conftest import ClientFactory

from optimizely_odp_ext import BatchEventManager, OdpOptimizely, transport
from optimizely_odp_ext.testing import OdpCollector

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")


def _send_until(client: OdpOptimizely, arrived: Callable[[], bool], deadline: float) -> bool:
    """Send an event and flush until ``arrived()`` is true, or the deadline passes."""
    while time.monotonic() < deadline:
        client.send_odp_event("a", {"fs_user_id": "u"})
        client.flush(5)
        if arrived():
            return True
    return False


def test_a_proxy_set_in_the_environment_is_used_and_a_change_followed(
        make_client: ClientFactory, collector: OdpCollector, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    client = make_client(odp_event_manager=BatchEventManager(flush_interval=60))
    with OdpCollector() as proxy:
        assert client.send_odp_event("a", {"fs_user_id": "u"}) and client.flush(5)
        assert collector.event_count() == 1 and proxy.request_count() == 0

        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        deadline = time.monotonic() + transport.ENVIRONMENT_TTL + 15
        assert _send_until(client, lambda: proxy.request_count() > 0, deadline), "the proxy was never used"
        # A proxy is sent the whole URL of the destination.
        assert proxy.requests[0].path == f"{collector.url}/v3/events"

        monkeypatch.delenv("HTTP_PROXY")
        before = collector.event_count()
        deadline = time.monotonic() + transport.ENVIRONMENT_TTL + 15
        assert _send_until(client, lambda: collector.event_count() > before, deadline), "the proxy was kept"
