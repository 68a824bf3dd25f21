"""Building an event from a send_odp_event call: copies, normalisation, default data."""

from __future__ import annotations

import json
import uuid

import pytest

from optimizely_odp_ext.compat import SDK_VERSION
from optimizely_odp_ext.event import InvalidEventError, build_event
from optimizely_odp_ext.result import DiscardReason


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"fs_user_id": "u", "email": "e"}, {"fs_user_id": "u", "email": "e"}),
        ({"FS-USER-ID": "u", "email": "e"}, {"email": "e", "fs_user_id": "u"}),
        ({"Fs_User_Id": "u"}, {"fs_user_id": "u"}),
        ({"fs-user-id": "u", "fs_user_id": "v"}, {"fs_user_id": "u"}),  # as optimizely-sdk 5.x
        ({"fs_user_id": "v", "fs-user-id": "u"}, {"fs_user_id": "v", "fs-user-id": "u"}),
        ({"vuid": "x"}, {"vuid": "x"}),
    ],
)
def test_user_id_key_is_normalised_on_a_copy(given: dict[str, str], expected: dict[str, str]) -> None:
    original = dict(given)
    event = build_event("a", given)
    assert event.identifiers == expected
    assert list(event.identifiers) == list(expected)
    assert given == original


def test_wire_form_has_default_data_that_the_caller_can_override() -> None:
    event = build_event("purchase", {"fs_user_id": "u"}, None, {"price": 9.5, "data_source": "mine"})
    wire = json.loads(event.to_json())
    assert wire["type"] == "fullstack"
    assert wire["action"] == "purchase"
    data = wire["data"]
    uuid.UUID(data["idempotence_id"])
    assert data["data_source_type"] == "sdk"
    assert data["data_source"] == "mine"
    assert data["data_source_version"] == SDK_VERSION
    assert data["price"] == 9.5


def test_idempotence_ids_are_version_4_uuids_and_unique() -> None:
    from optimizely_odp_ext.event import new_idempotence_id

    ids = {new_idempotence_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for value in list(ids)[:100]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_idempotence_id_is_fixed_once_encoded_and_caller_id_wins() -> None:
    event = build_event("a", {"fs_user_id": "u"})
    assert event.to_json() == event.to_json()
    assert json.loads(build_event("a", {"x": "y"}, data={"idempotence_id": "mine"}).to_json())["data"][
        "idempotence_id"] == "mine"


def test_later_changes_to_the_callers_dicts_do_not_reach_the_event() -> None:
    identifiers, data = {"fs_user_id": "u"}, {"k": 1}
    event = build_event("a", identifiers, data=data)
    identifiers["fs_user_id"] = "changed"
    data["k"] = 2
    wire = json.loads(event.to_json())
    assert wire["identifiers"] == {"fs_user_id": "u"}
    assert wire["data"]["k"] == 1


def test_none_and_json_scalars_are_valid_data() -> None:
    data = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}
    wire = json.loads(build_event("a", {"k": "v"}, data=data).to_json())
    assert {k: wire["data"][k] for k in data} == data


def test_custom_type_is_kept() -> None:
    assert build_event("a", {"k": "v"}, "custom").type == "custom"


def test_invalid_event_error_carries_reason_and_message() -> None:
    with pytest.raises(InvalidEventError) as raised:
        build_event("a", {"k": "v"}, data={"n": float("nan")})
    assert raised.value.reason is DiscardReason.INVALID_DATA
    assert "'n'" in str(raised.value)
