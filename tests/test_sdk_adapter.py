"""On optimizely-sdk 5.x the base SDK's own ODP events go through our one manager."""

from __future__ import annotations

import threading

import pytest
from conftest import ClientFactory

from optimizely_odp_ext.compat import HAS_NATIVE_ODP
from optimizely_odp_ext.sdk_adapter import SdkEventManagerAdapter
from optimizely_odp_ext.testing import OdpCollector

pytestmark = pytest.mark.skipif(not HAS_NATIVE_ODP, reason="optimizely-sdk 4.1 has no OdpManager")


def test_the_base_odp_manager_uses_the_adapter_and_no_odp_thread_runs(make_client: ClientFactory) -> None:
    from optimizely.helpers import validator
    from optimizely.odp.odp_manager import OdpManager

    client = make_client()
    assert isinstance(client.odp_manager, OdpManager)
    adapter = client.odp_manager.event_manager
    assert isinstance(adapter, SdkEventManagerAdapter)
    assert validator.is_event_manager_valid(adapter)
    for method in ("start", "send_event", "identify_user", "update_config", "stop"):
        assert callable(getattr(adapter, method))
    assert adapter.is_running
    assert client.create_user_context("u1") is not None
    assert client.send_odp_event("a", {"fs_user_id": "u1"})
    assert client.flush(10)
    assert "OdpThread" not in {t.name for t in threading.enumerate()}


def test_identified_event_from_the_real_odp_manager_reaches_the_collector(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    client = make_client()
    client.odp_manager.identify_user({"fs_user_id": "u1", "email": "a@example.com", "empty": ""})
    client.odp_manager.identify_user({"fs_user_id": "only-one"})  # one identifier links nothing
    assert client.flush(10)
    [event] = collector.events
    assert event["action"] == "identified" and event["type"] == "fullstack"
    assert event["identifiers"] == {"fs_user_id": "u1", "email": "a@example.com"}


def test_send_event_through_the_odp_manager_is_delivered(make_client: ClientFactory,
                                                         collector: OdpCollector) -> None:
    client = make_client()
    client.odp_manager.send_event("fullstack", "via-manager", {"fs_user_id": "u"}, {"k": 1})
    assert client.flush(10)
    assert [e["action"] for e in collector.events] == ["via-manager"]


def test_base_close_does_not_stop_delivery_early(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    for i in range(10):
        client.send_odp_event("a", {"fs_user_id": str(i)})
    client.close()
    assert collector.event_count() == 10
    assert not client.odp_manager.event_manager.is_running
