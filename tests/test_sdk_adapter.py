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


@pytest.mark.parametrize("user", ["user-1", ""])
def test_identify_user_with_a_user_id_string_sends_what_5_0_to_5_5_send(
    make_client: ClientFactory, collector: OdpCollector, user: str,
) -> None:
    client = make_client()
    adapter = client.odp_manager.event_manager
    adapter.identify_user(user)  # optimizely-sdk 5.0 to 5.5 pass the user id
    assert client.flush(10)
    [event] = collector.events
    assert event["action"] == "identified" and event["type"] == "fullstack"
    assert event["identifiers"] == {"fs_user_id": user}
    assert set(event["data"]) == {"idempotence_id", "data_source_type", "data_source", "data_source_version"}


def test_create_user_context_works_on_every_line_with_an_integrated_datafile(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    from optimizely_odp_ext.compat import IDENTIFY_TAKES_USER_ID

    client = make_client()
    user = client.create_user_context("user-1")
    assert user is not None and user.decide("checkout_redesign").flag_key == "checkout_redesign"
    assert client.flush(10)
    expected = [{"fs_user_id": "user-1"}] if IDENTIFY_TAKES_USER_ID else []
    assert [e["identifiers"] for e in collector.events if e["action"] == "identified"] == expected


def test_no_identify_event_while_not_integrated(make_client: ClientFactory, collector: OdpCollector,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import json

    from optimizely_odp_ext.testing import sample_datafile

    client = make_client(datafile=json.dumps(sample_datafile()))
    caplog.clear()
    client.odp_manager.event_manager.identify_user("user-1")
    client.odp_manager.event_manager.identify_user({"fs_user_id": "u", "email": "e@example.com"})
    assert client.flush(5)
    assert collector.request_count() == 0
    assert client.odp_stats()["refused_total"] == 0, "not a refusal: nothing was asked of send_odp_event"
