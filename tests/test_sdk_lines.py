"""The base client's public API through ``OdpOptimizely``, side by side with the official
``Optimizely`` on the installed optimizely-sdk release (CI runs this on every released line).

Each client gets the same ODP-integrated datafile (each pointing at its own loopback
collector) and its own RecordingEventDispatcher; every call is made on both and the answers,
the notifications, the impression/conversion events and the ODP events are compared.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, SDK_LOGGER
from optimizely.helpers import enums
from optimizely.optimizely import Optimizely

from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.compat import HAS_NATIVE_ODP, IDENTIFY_TAKES_USER_ID, SDK_VERSION
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile

FLAG, EXPERIMENT, EVENT = "checkout_redesign", "checkout_redesign_test", "purchase"
SEGMENT_AUDIENCE = {
    "id": "40000000009", "name": "ODP segment",
    "conditions": ["and", ["or", ["or", {"value": "big-spenders", "type": "third_party_dimension",
                                         "name": "odp.audiences", "match": "qualified"}]]],
}
_VOLATILE = re.compile(r'"(uuid|timestamp|idempotence_id)": ("[^"]*"|\d+)')


class Side:
    """One client with its own collector, dispatcher and notification log."""

    def __init__(self, cls: type[Optimizely], collector: OdpCollector, segments: bool = False) -> None:
        datafile = sample_datafile(collector.url, API_KEY)
        if segments:
            datafile["typedAudiences"] = [SEGMENT_AUDIENCE]
        self.collector = collector
        self.dispatcher = RecordingEventDispatcher()
        self.client = cls(datafile=json.dumps(datafile), event_dispatcher=self.dispatcher,
                          logger=logging.getLogger(f"{SDK_LOGGER}.{cls.__name__}"))
        self.notes: list[tuple[str, Any]] = []
        for kind in ("ACTIVATE", "DECISION", "TRACK", "LOG_EVENT", "OPTIMIZELY_CONFIG_UPDATE"):
            name = getattr(enums.NotificationTypes, kind)
            self.client.notification_center.add_notification_listener(
                name, lambda *args, _kind=kind: self.notes.append((_kind, _volatile_free(_plain(args)))))

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
        elif callable(getattr(self.client.event_processor, "stop", None)):  # 4.1 has no close()
            self.client.event_processor.stop()


def _plain(value: Any) -> Any:
    """A comparable, JSON-like copy of notification arguments and decisions."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "params"):  # a LogEvent
        return {"url": value.url, "params": _volatile_free(value.params), "http_verb": value.http_verb}
    if hasattr(value, "__dict__"):
        return {"<type>": type(value).__name__,
                **{k: _plain(v) for k, v in vars(value).items() if k not in ("client", "logger", "lock")}}
    return repr(value)


def _volatile_free(value: Any) -> Any:
    return json.loads(_VOLATILE.sub(r'"\1": "-"', json.dumps(value, sort_keys=True)))


def _decision(decision: Any) -> dict[str, Any]:
    return {"variation_key": decision.variation_key, "enabled": decision.enabled, "flag_key": decision.flag_key,
            "rule_key": decision.rule_key, "variables": decision.variables, "reasons": decision.reasons}


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    with OdpCollector(api_key=API_KEY) as for_official, OdpCollector(api_key=API_KEY) as for_ours:
        official, ours = Side(Optimizely, for_official), Side(OdpOptimizely, for_ours)
        yield official, ours
        official.close()
        ours.close()


def both(sides: tuple[Side, Side], call: Any) -> Any:
    """Make ``call`` on both clients and return the answer once it is the same."""
    official, ours = (call(side.client) for side in sides)
    assert ours == official
    return ours


def test_decide_decide_all_and_decide_for_keys(sides: tuple[Side, Side]) -> None:
    for user_id in ("user-1", "user-2", "user-3"):
        both(sides, lambda c, u=user_id: _decision(c.create_user_context(u, {"plan": "pro"}).decide(FLAG)))
        both(sides, lambda c, u=user_id: {k: _decision(d) for k, d in c.create_user_context(u).decide_all().items()})
        both(sides, lambda c, u=user_id: {k: _decision(d) for k, d in
                                          c.create_user_context(u).decide_for_keys([FLAG, "no-such-flag"]).items()})
    both(sides, lambda c: _decision(c.create_user_context("u").decide(FLAG, ["DISABLE_DECISION_EVENT"])))
    both(sides, lambda c: c.create_user_context(123))  # not a valid user id: None on both


def test_activate_track_get_variation_and_is_feature_enabled(sides: tuple[Side, Side]) -> None:
    for user_id in ("user-1", "user-2", "user-3", "user-4"):
        both(sides, lambda c, u=user_id: c.activate(EXPERIMENT, u, {"plan": "pro"}))
        both(sides, lambda c, u=user_id: c.get_variation(EXPERIMENT, u))
        both(sides, lambda c, u=user_id: c.is_feature_enabled(FLAG, u))
        both(sides, lambda c, u=user_id: c.track(EVENT, u, {"plan": "pro"}, {"revenue": 4200}))
    both(sides, lambda c: c.get_enabled_features("user-1"))
    both(sides, lambda c: c.activate("no-such-experiment", "user-1"))
    both(sides, lambda c: c.track("no-such-event", "user-1"))


def test_notification_listeners_and_dispatched_events_are_the_same(sides: tuple[Side, Side]) -> None:
    for side in sides:
        client = side.client
        user = client.create_user_context("user-1", {"plan": "pro"})
        user.decide(FLAG)
        user.track_event(EVENT, {"revenue": 100})
        client.activate(EXPERIMENT, "user-2")
        client.track(EVENT, "user-2")
        client.is_feature_enabled(FLAG, "user-3")
        side.close()
    official, ours = sides
    for kind in ("ACTIVATE", "DECISION", "TRACK", "LOG_EVENT"):  # LOG_EVENT comes from the processor's thread
        assert [n for n in ours.notes if n[0] == kind] == [n for n in official.notes if n[0] == kind]
    assert [n for n in ours.notes if n[0] != "LOG_EVENT"] == [n for n in official.notes if n[0] != "LOG_EVENT"]
    assert [_plain(e) for e in ours.dispatcher.events] == [_plain(e) for e in official.dispatcher.events]
    assert len(ours.dispatcher.events) >= 4, "impressions and conversions stayed on this machine"


def test_get_optimizely_config(sides: tuple[Side, Side]) -> None:
    official, ours = (json.loads(side.client.get_optimizely_config().get_datafile()
                                 .replace(side.collector.url, "<odp>")) for side in sides)
    assert ours == official
    both(sides, lambda c: sorted(c.get_optimizely_config().features_map))
    both(sides, lambda c: sorted(c.get_optimizely_config().experiments_map))
    both(sides, lambda c: c.get_optimizely_config().revision)


def test_close_is_idempotent_and_the_client_still_answers_as_the_official(sides: tuple[Side, Side]) -> None:
    for side in sides:
        side.close()
        side.close()
    both(sides, lambda c: _decision(c.create_user_context("user-1").decide(FLAG)))


@pytest.mark.skipif(not HAS_NATIVE_ODP, reason="optimizely-sdk 4.1 has no ODP")
def test_the_odp_events_the_sdk_sends_itself_are_the_officials(sides: tuple[Side, Side]) -> None:
    """5.0 to 5.5: every user context sends ``identified`` with its user id; 5.6+: only with two
    or more identifiers, which create_user_context never has. Both sides, the same events."""
    for side in sides:
        for user_id in ("user-1", "user-2", ""):
            assert side.client.create_user_context(user_id) is not None
        side.client.odp_manager.identify_user({"fs_user_id": "u", "email": "e@example.com"} if not
                                              IDENTIFY_TAKES_USER_ID else "direct-user")
        side.close()
    official, ours = sides

    def sent(side: Side) -> list[str]:
        return sorted(_VOLATILE.sub('"-": "-"', json.dumps(e)) for r in side.collector.requests
                      for e in json.loads(r.body))

    assert sent(ours) == sent(official)
    expected = 4 if IDENTIFY_TAKES_USER_ID else 1
    assert len(sent(ours)) == expected, f"optimizely-sdk {SDK_VERSION}"
    assert {e["action"] for e in ours.collector.events} == {"identified"}


@pytest.mark.skipif(not HAS_NATIVE_ODP, reason="optimizely-sdk 4.1 has no ODP segments")
def test_fetch_qualified_segments_fails_as_the_official_does_without_a_segments_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with OdpCollector(api_key=API_KEY) as for_official, OdpCollector(api_key=API_KEY) as for_ours:
        official, ours = Side(Optimizely, for_official, segments=True), Side(OdpOptimizely, for_ours, segments=True)
        try:
            answers = []
            for side in (official, ours):
                user = side.client.create_user_context("user-1")
                answers.append((user.fetch_qualified_segments(), user.get_qualified_segments()))
            assert answers[0] == answers[1] == (False, None)
            errors = [[r.getMessage().replace(s.collector.url, "<host>") for r in caplog.records
                       if r.name == s.client.logger.name and r.levelno >= logging.ERROR
                       and "segments" in r.getMessage()] for s in (official, ours)]
            assert errors[0] and errors[0] == errors[1]
            assert [r.path for r in for_ours.requests if "graphql" in r.path] == ["/v3/graphql"]
        finally:
            official.close()
            ours.close()


@pytest.mark.skipif(not HAS_NATIVE_ODP, reason="optimizely-sdk 4.1 has no ODP segments")
def test_fetch_qualified_segments_without_segments_in_the_datafile(sides: tuple[Side, Side]) -> None:
    def fetch(client: Any) -> Any:
        user = client.create_user_context("user-1")
        return (user.fetch_qualified_segments(), user.get_qualified_segments())

    assert both(sides, fetch) == (True, [])


def test_send_odp_event_on_this_line(sides: tuple[Side, Side]) -> None:
    """The one call the swap adds (4.1) or changes (5.x: it now answers)."""
    official, ours = sides
    assert ours.client.send_odp_event("purchase", {"fs_user_id": "user-1"}, data={"price": 1})
    assert ours.client.flush(10)
    assert [e["action"] for e in ours.collector.events] == ["purchase"]
    if HAS_NATIVE_ODP:
        assert official.client.send_odp_event("purchase", {"fs_user_id": "user-1"}, data={"price": 1}) is None
        official.close()
        theirs = [copy.deepcopy(e) for e in official.collector.events]
        assert [_volatile_free(e) for e in theirs] == [_volatile_free(e) for e in ours.collector.events]
    else:
        assert not hasattr(official.client, "send_odp_event")
