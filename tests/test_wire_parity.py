"""For the same valid calls, ODP receives from OdpOptimizely what it receives from the
official optimizely-sdk 5.x client (apart from idempotence_id values), side by side."""

from __future__ import annotations

import copy
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
