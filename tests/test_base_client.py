"""Everything the base client does keeps working after swapping the import."""

from __future__ import annotations

import inspect

from conftest import ClientFactory
from optimizely import optimizely as sdk
from optimizely.helpers import enums

from optimizely_odp_ext import OdpNotificationCenter, OdpOptimizely
from optimizely_odp_ext.testing import RecordingEventDispatcher


def test_is_an_optimizely_client(make_client: ClientFactory) -> None:
    client = make_client()
    assert isinstance(client, sdk.Optimizely)
    assert client.is_valid


def test_decide_activate_track_and_config_work(make_client: ClientFactory) -> None:
    dispatcher = RecordingEventDispatcher()
    client = make_client(event_dispatcher=dispatcher)
    decisions: list[object] = []
    client.notification_center.add_notification_listener(
        enums.NotificationTypes.DECISION, lambda *args: decisions.append(args))
    user = client.create_user_context("user-1", {"plan": "pro"})
    decision = user.decide("checkout_redesign")
    assert decision.flag_key == "checkout_redesign"
    assert decision.variation_key in ("control", "redesign")
    assert client.activate("checkout_redesign_test", "user-1") in ("control", "redesign")
    client.track("purchase", "user-1")
    config = client.get_optimizely_config()
    assert config is not None and "checkout_redesign" in config.features_map
    assert decisions, "DECISION listeners still hear decisions"
    client.close()
    assert dispatcher.events, "impressions and conversions went to the local dispatcher"


def test_positional_arguments_of_the_base_class_are_accepted(datafile: str) -> None:
    dispatcher = RecordingEventDispatcher()
    client = OdpOptimizely(datafile, dispatcher)
    assert client.is_valid and client.event_dispatcher is dispatcher
    client.close()


def test_keyword_arguments_of_the_base_class_take_effect(datafile: str) -> None:
    from optimizely.error_handler import NoOpErrorHandler

    assert {"datafile", "event_dispatcher", "logger", "sdk_key", "config_manager", "notification_center",
            "default_decide_options"} <= set(inspect.signature(sdk.Optimizely.__init__).parameters)
    client = OdpOptimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher(),
                           error_handler=NoOpErrorHandler, skip_json_validation=True,
                           default_decide_options=["DISABLE_DECISION_EVENT"])
    assert client.default_decide_options == ["DISABLE_DECISION_EVENT"]
    assert client.error_handler is NoOpErrorHandler
    client.close()


def test_default_notification_center_hears_odp_and_sdk_notifications(make_client: ClientFactory) -> None:
    client = make_client()
    assert isinstance(client.notification_center, OdpNotificationCenter)


def test_a_callers_notification_center_is_used_as_is(make_client: ClientFactory) -> None:
    from optimizely.notification_center import NotificationCenter

    center = NotificationCenter()
    client = make_client(notification_center=center)
    assert client.notification_center is center
    assert client.send_odp_event("a", {"fs_user_id": "u"})
