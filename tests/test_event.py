"""Building an event from a send_odp_event call: copies, normalisation, default data."""

from __future__ import annotations

import decimal
import enum
import importlib.util
import json
import random
import uuid
from typing import Any

import pytest

from optimizely_odp_ext import encoding
from optimizely_odp_ext.compat import SDK_VERSION
from optimizely_odp_ext.event import InvalidEventError, _check_data, build_event, wire_dict
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


class _Key(str):
    """A string subclass, as an enum of keys would be."""


class _Number(int):
    def __str__(self) -> str:
        return "not the number"


class _Color(enum.IntEnum):
    RED = 1


class _WithJson:
    def __json__(self) -> str:  # ujson would paste this into its output
        return '1, "data_source": "injected"'


class _WithToDict:
    def toDict(self) -> dict[str, int]:  # ujson's hook name
        raise KeyError("toDict")


class _BadItems(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise KeyError("items")


def _random_value(rng: random.Random) -> Any:
    kind = rng.randrange(16)
    if kind == 0:
        return rng.choice([float("nan"), float("inf"), -float("inf")])
    if kind == 1:
        return rng.choice([10**5000, 2**70, -(10**40), True, None, _Number(5), _Color.RED])
    if kind == 2:
        return rng.choice([[1, 2], {"a": 1}, (1,), object(), b"x", {1, 2}, _BadItems(a=1)])
    if kind == 3:
        return rng.choice([1e-7, 2.5e-5, 1e22, -0.0, 0.1, 5e-324])
    if kind == 4:
        return rng.choice([_Key("sub"), decimal.Decimal("0.1000000000000000000001"), _WithJson(), _WithToDict()])
    alphabet = [rng.randrange(0x20, 0x80), rng.randrange(0x80, 0xD800), rng.randrange(0xD800, 0xE000),
                rng.randrange(0xE000, 0x110000), ord("["), ord("{"), ord("\\"), ord('"'), 0x7F]
    return "".join(chr(rng.choice(alphabet)) for _ in range(rng.randrange(0, 6)))


def _random_data(rng: random.Random, valid_only: bool) -> dict[Any, Any]:
    """Up to 6 random keys and values, half the time after 10 plain ones (so ujson, when
    installed, encodes them: see encoding.FAST_FROM_KEYS)."""
    data: dict[Any, Any] = {f"plain{i}": i for i in range(10)} if rng.random() < 0.5 else {}
    for i in range(rng.randrange(0, 7)):
        key: Any = rng.choice([f"k{i}", f"k{i}\ud800", f"k{i}é", _Key(f"s{i}"), i, 1.5, None, (i,),
                               _Number(i + 100), _Color.RED, "idempotence_id", "data_source"])
        data[key] = _random_value(rng)
    if valid_only:
        for key in list(data):
            try:
                _check_data({key: data[key]})
            except InvalidEventError:
                del data[key]
    return data


@pytest.fixture(params=["json", "ujson"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "ujson":
        fast = encoding._load_ujson() if importlib.util.find_spec("ujson") else None
        if fast is None:
            pytest.skip("the [fast] extra is not installed")
        monkeypatch.setattr(encoding, "_fast", fast)
    else:
        monkeypatch.setattr(encoding, "_fast", None)
    return str(request.param)


def test_data_is_refused_exactly_when_a_value_by_value_check_refuses_it(encoder: str) -> None:
    """Plain data is checked by encoding it; the verdict and its message are the ones the
    value-by-value check gives, for every mix of valid and invalid keys and values (ujson's
    hooks included: Decimal, __json__, toDict)."""
    for seed in range(3000):
        data = _random_data(random.Random(seed), valid_only=False)
        try:
            _check_data(data)
            expected = None
        except InvalidEventError as invalid:
            expected = (invalid.reason, invalid.message)
        try:
            build_event("a", {"fs_user_id": "u"}, data=data)
            got = None
        except InvalidEventError as invalid:
            got = (invalid.reason, invalid.message)
        assert got == expected, (seed, data)


def test_an_events_json_is_json_dumps_of_its_wire_dict(encoder: str) -> None:
    for seed in range(3000):
        rng = random.Random(seed)
        data = _random_data(rng, valid_only=True)
        identifiers = {rng.choice(["fs_user_id", "é", 'a"\\/\x7f']): _random_value(rng) if rng.random() < 0.3 else "u"}
        if rng.random() < 0.5:  # half the events have two identifiers (one has a path of its own)
            identifiers["email"] = "é@x"
        try:
            event = build_event(rng.choice(["buy", "é", "a\x7fb"]), identifiers, rng.choice([None, "t"]), data)
        except InvalidEventError:
            continue  # an identifier value that cannot be sent
        sent = event.to_json()
        idempotence_id = json.loads(sent)["data"]["idempotence_id"]
        expected = wire_dict(event.type, event.action, event.identifiers, event.data)
        if "idempotence_id" not in (data or {}):
            expected["data"]["idempotence_id"] = idempotence_id
        assert sent == json.dumps(expected).encode(), (seed, data)


def test_a_forked_child_does_not_send_the_ids_its_parent_made_ahead() -> None:
    import os

    from optimizely_odp_ext.event import new_idempotence_id

    new_idempotence_id()  # the parent now holds ids made ahead
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            ids = [json.loads(build_event("a", {"k": "v"}).to_json())["data"]["idempotence_id"] for _ in range(50)]
            os.write(write_end, json.dumps(ids).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = set(json.loads(pipe.read()))
    os.waitpid(child, 0)
    parent_ids = {json.loads(build_event("a", {"k": "v"}).to_json())["data"]["idempotence_id"] for _ in range(50)}
    assert len(child_ids) == 50 and len(parent_ids) == 50
    assert not child_ids & parent_ids


def test_an_events_idempotence_id_is_fixed_when_it_is_built() -> None:
    event = build_event("a", {"k": "v"}, data={"n": 1})
    first = json.loads(event.to_json())["data"]["idempotence_id"]
    uuid.UUID(first)
    assert json.loads(event.to_json())["data"]["idempotence_id"] == first
