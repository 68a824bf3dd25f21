"""For the same valid calls, ODP receives from OdpOptimizely what it receives from the
official optimizely-sdk 5.x client (apart from idempotence_id values), side by side: the
same events, and for one event per request the same bytes."""

from __future__ import annotations

import copy
import re
from collections import UserDict
from typing import Any

import pytest
from conftest import ClientFactory

from optimizely_odp_ext.compat import HAS_NATIVE_ODP
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher

pytestmark = pytest.mark.skipif(not HAS_NATIVE_ODP, reason="the official client sends ODP events on 5.x only")

CALLS: list[tuple[str, dict[str, str], Any, Any]] = [
    ("purchase", {"fs_user_id": "u1", "email": "a@example.com"}, "fullstack",
     {"price": 9.5, "currency": "EUR", "gift": False, "note": None, "qty": 2}),
    ("login", {"FS-USER-ID": "u2"}, None, None),
    ("custom", {"vuid": "v-1"}, "mytype", {"data_source": "override", "data_source_type": "mine"}),
    ("page", {"email": "e@example.com", "fs-user-id": "u3"}, "", {}),
    ("visit", {"Fs_User_Id": "u4", "fs_user_id": "u5"}, "fullstack", {"idempotence_id": "fixed-id"}),
]


def _without_idempotence_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stripped = []
    for event in events:
        event = copy.deepcopy(event)
        if event["data"]["idempotence_id"] != "fixed-id":
            event["data"]["idempotence_id"] = "<uuid>"
        stripped.append(event)
    return stripped


def test_same_calls_same_events_on_the_wire(make_client: ClientFactory, collector: OdpCollector,
                                            datafile: str) -> None:
    from optimizely.optimizely import Optimizely

    official = Optimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher())
    for action, identifiers, event_type, data in CALLS:
        official.send_odp_event(action, dict(identifiers), event_type, copy.deepcopy(data))
    official.close()
    from_official = collector.events
    collector.clear()

    ours = make_client()
    for action, identifiers, event_type, data in CALLS:
        assert ours.send_odp_event(action, dict(identifiers), event_type, copy.deepcopy(data))
    assert ours.flush(10)
    from_ours = collector.events

    assert len(from_official) == len(CALLS)
    key = lambda e: e["action"]  # noqa: E731
    assert _without_idempotence_ids(sorted(from_ours, key=key)) == \
        _without_idempotence_ids(sorted(from_official, key=key))
    for event in from_ours:  # key order of the objects matches too
        twin = next(e for e in from_official if e["action"] == event["action"])
        assert list(event["identifiers"]) == list(twin["identifiers"])
        assert list(event["data"]) == list(twin["data"])


BYTE_CALLS: list[tuple[str, dict[str, Any], Any, Any]] = [
    *CALLS,
    ("numbers", {"fs_user_id": 123, "score": 1.5, "flag": True, "none": None}, "fullstack", None),
    ("unicode", {"email": "zoë@example.com", "": "empty key"}, "fullstack",
     {"city": "Zürich", "emoji": "\U0001f600", "quote": 'say "hi"\n', "big": 10**30, "tiny": 1e-300}),
    ("keys", {"fs_user_id": "u6"}, "fullstack", {1: "int key", 2.5: "float key", False: "bool key", None: "null"}),
    ("floats", {"fs_user_id": "u7"}, "fullstack", {"a": 0.1, "b": -0.0, "c": 1e100, "d": 3.0}),
    # data that is not a dict: empty ones count as none (the official's `data or {}`), a mapping is
    # taken as its items (its values() checked, then dict.update)
    ("empty list data", {"fs_user_id": "u8"}, "fullstack", []),
    ("empty string data", {"fs_user_id": "u9"}, "fullstack", ""),
    ("mapping data", {"fs_user_id": "u10"}, "fullstack", UserDict({"k": "v", "idempotence_id": "mine"})),
    # identifier keys after the user id's are not looked at by the official client: json.dumps
    # turns scalars into strings
    ("keys after the user id", {"FS-USER-ID": "u11", 5: "x", None: "n", 1.5: "f", True: "t"}, "fullstack", None),
    # NaN and the infinities as keys: json.dumps writes the strings "NaN", "Infinity" (valid JSON)
    ("non-finite keys", {"fs_user_id": "u12", float("inf"): "i"}, "fullstack", {float("nan"): "n", float("-inf"): 1}),
    ("non-finite keys and a default key", {"fs_user_id": "u13"}, "fullstack",
     {float("nan"): "n", "data_source": "mine"}),
]
_IDEMPOTENCE_ID = re.compile(rb'"idempotence_id": "[0-9a-f-]{36}"')


def _masked(body: bytes) -> bytes:
    return _IDEMPOTENCE_ID.sub(b'"idempotence_id": "<uuid>"', body)


def test_each_event_is_the_same_bytes_on_the_wire(make_client: ClientFactory, collector: OdpCollector,
                                                  datafile: str) -> None:
    """One event per request on both sides (the official with odp_event_flush_interval=0), so
    whole request bodies compare byte for byte, apart from generated idempotence ids."""
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings
    from optimizely.optimizely import Optimizely

    official = Optimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher(),
                          settings=OptimizelySdkSettings(odp_event_flush_interval=0))
    for action, identifiers, event_type, data in BYTE_CALLS:
        official.send_odp_event(action, copy.deepcopy(identifiers), event_type, copy.deepcopy(data))
    official.close()
    from_official = [request.body for request in collector.requests]
    collector.clear()

    ours = make_client()
    for action, identifiers, event_type, data in BYTE_CALLS:
        assert ours.send_odp_event(action, identifiers, event_type, data), action
        ours.flush(10)
    from_ours = [request.body for request in collector.requests]

    assert len(from_official) == len(BYTE_CALLS)
    assert [_masked(body) for body in from_ours] == [_masked(body) for body in from_official]
