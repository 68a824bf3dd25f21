"""send_odp_event end to end: what reaches the collector, what is refused and why."""

from __future__ import annotations

import copy
import json
import logging
import math
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory, log_lines

from optimizely_odp_ext import DiscardReason, EventManager, OdpEvent, OdpOptimizely, SendResult
from optimizely_odp_ext.compat import HAS_NATIVE_ODP, SDK_VERSION
from optimizely_odp_ext.result import ACCEPTED
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile


class Opaque:
    pass


BAD_INPUTS: list[tuple[str, dict[str, Any], DiscardReason, str]] = [
    ("action None", {"action": None}, DiscardReason.INVALID_ACTION, "ODP action is not valid (cannot be empty)."),
    ("action empty", {"action": ""}, DiscardReason.INVALID_ACTION, "ODP action is not valid (cannot be empty)."),
    ("action not a string", {"action": 7}, DiscardReason.INVALID_ACTION, "must be a string, not int"),
    ("action lone surrogate", {"action": "buy\ud800"}, DiscardReason.INVALID_ACTION, "lone surrogate"),
    ("type not a string", {"type": 3}, DiscardReason.INVALID_TYPE, "ODP event type is not valid"),
    ("type lone surrogate", {"type": "\udfffx"}, DiscardReason.INVALID_TYPE, "lone surrogate"),
    ("identifiers None", {"identifiers": None}, DiscardReason.INVALID_IDENTIFIERS, "must be a dict, not None"),
    ("identifiers empty", {"identifiers": {}}, DiscardReason.INVALID_IDENTIFIERS,
     "ODP events must have at least one key-value pair in identifiers."),
    ("identifiers not a dict", {"identifiers": [("fs_user_id", "u")]}, DiscardReason.INVALID_IDENTIFIERS,
     "must be a dict, not list"),
    ("identifiers key not a string", {"identifiers": {1: "u"}}, DiscardReason.INVALID_IDENTIFIERS,
     "a key that is not a string: int"),
    ("identifiers key not a scalar after the user id", {"identifiers": {"fs_user_id": "u", (1,): "x"}},
     DiscardReason.INVALID_IDENTIFIERS, "a key that is not a string: tuple"),
    ("identifiers list value", {"identifiers": {"fs_user_id": ["u"]}}, DiscardReason.INVALID_IDENTIFIERS,
     "value of 'fs_user_id' must be one value (str, int, float, bool or None), not list"),
    ("identifiers NaN value", {"identifiers": {"fs_user_id": math.nan}}, DiscardReason.INVALID_IDENTIFIERS,
     "value of 'fs_user_id' is nan"),
    ("identifiers huge int", {"identifiers": {"fs_user_id": 10**5000}}, DiscardReason.INVALID_IDENTIFIERS,
     "value of 'fs_user_id' is an integer of more than"),
    ("identifiers lone surrogate value", {"identifiers": {"email": "a\ud800@example.com"}},
     DiscardReason.INVALID_IDENTIFIERS, "value of 'email' has a lone surrogate"),
    ("identifiers lone surrogate key", {"identifiers": {"e\udc00": "x"}}, DiscardReason.INVALID_IDENTIFIERS,
     "has a lone surrogate"),
    ("data not a dict", {"data": ["x"]}, DiscardReason.INVALID_DATA, "must be a dict, not list"),
    ("data a truthy string", {"data": "x"}, DiscardReason.INVALID_DATA, "must be a dict, not str"),
    ("data key not a scalar", {"data": {(1, 2): "x"}}, DiscardReason.INVALID_DATA, "A key that is not a string: tuple"),
    ("data nested dict", {"data": {"n": {"a": 1}}}, DiscardReason.INVALID_DATA, "Value of 'n' is dict"),
    ("data list", {"data": {"l": [1, 2]}}, DiscardReason.INVALID_DATA, "Value of 'l' is list"),
    ("data object", {"data": {"o": Opaque()}}, DiscardReason.INVALID_DATA, "Value of 'o' is Opaque"),
    ("data NaN", {"data": {"x": math.nan}}, DiscardReason.INVALID_DATA, "Value of 'x' is nan"),
    ("data Infinity", {"data": {"x": math.inf}}, DiscardReason.INVALID_DATA, "Value of 'x' is inf"),
    ("data -Infinity", {"data": {"x": -math.inf}}, DiscardReason.INVALID_DATA, "Value of 'x' is -inf"),
    ("data huge int", {"data": {"n": 10**5000}}, DiscardReason.INVALID_DATA,
     "Value of 'n' is an integer of more than 4300 digits"),
    ("data lone surrogate value", {"data": {"note": "x\ud800y"}}, DiscardReason.INVALID_DATA,
     "Value of 'note' has a lone surrogate"),
    ("data lone surrogate key", {"data": {"n\ud800": 1}}, DiscardReason.INVALID_DATA, "A key has a lone surrogate"),
]
OFFICIAL_WORDING = {
    DiscardReason.INVALID_DATA: "ODP data is not valid.",
    DiscardReason.INVALID_ACTION: "ODP action is not valid",
}


def _snapshot(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # pragma: no cover - every input here can be copied
        return value


@pytest.mark.parametrize(("name", "override", "reason", "log"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_its_reason_logged_nothing_sent_nothing_mutated(
    make_client: ClientFactory, collector: OdpCollector, caplog: pytest.LogCaptureFixture,
    name: str, override: dict[str, Any], reason: DiscardReason, log: str,
) -> None:
    client = make_client()
    call: dict[str, Any] = {"action": "purchase", "identifiers": {"fs_user_id": "u1"}, "type": "fullstack",
                            "data": {"price": 1}}
    call.update(override)
    before = {key: _snapshot(value) for key, value in call.items()}
    objects = {key: value for key, value in call.items()}
    caplog.clear()

    result = client.send_odp_event(call["action"], call["identifiers"], call["type"], call["data"])

    assert not result
    assert result.reason is reason
    assert log in result.message
    assert result.message.startswith(OFFICIAL_WORDING.get(reason, "ODP ")), "official wording first"
    errors = log_lines(caplog, logging.ERROR)
    assert errors == [result.message], "exactly one clear error line"
    for key, value in call.items():
        assert value is objects[key]
        if not isinstance(value, dict) or not any(isinstance(v, Opaque) for v in value.values()):
            assert value == before[key] or (value != value)  # NaN-free inputs compare equal
    # nothing was sent: only the sentinel that follows reaches ODP
    assert client.send_odp_event("sentinel", {"fs_user_id": "u1"})
    assert client.flush(10)
    assert [e["action"] for e in collector.events] == ["sentinel"]


def test_accepted_event_reaches_odp_with_default_data(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    identifiers = {"FS-USER-ID": "user-1", "email": "a@example.com"}
    data = {"price": 9.5, "currency": "EUR", "gift": False, "note": None}
    frozen = (dict(identifiers), dict(data))

    result = client.send_odp_event("purchase", identifiers, "commerce", data)

    assert result and result.accepted and result.reason is None
    assert (identifiers, data) == frozen
    assert client.flush(10)
    [event] = collector.events
    assert event["type"] == "commerce"
    assert event["action"] == "purchase"
    assert event["identifiers"] == {"email": "a@example.com", "fs_user_id": "user-1"}
    assert event["data"]["price"] == 9.5 and event["data"]["note"] is None
    assert event["data"]["data_source_type"] == "sdk"
    assert event["data"]["data_source"] == "python-sdk"
    assert event["data"]["data_source_version"] == SDK_VERSION
    request = collector.requests[-1]
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"


def test_empty_type_becomes_fullstack(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    assert client.send_odp_event("a", {"fs_user_id": "u"}, None)
    assert client.send_odp_event("b", {"fs_user_id": "u"}, "")
    assert client.flush(10)
    assert {e["type"] for e in collector.events} == {"fullstack"}


def _assert_disabled(client: OdpOptimizely, collector: OdpCollector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    result = client.send_odp_event("purchase", {"fs_user_id": "u"})
    assert not result
    assert result.reason is DiscardReason.ODP_NOT_ENABLED
    assert log_lines(caplog, logging.ERROR) == ["ODP is not enabled."]
    assert client.flush(1)
    assert collector.request_count() == 0


def test_odp_disabled_argument(make_client: ClientFactory, collector: OdpCollector,
                               caplog: pytest.LogCaptureFixture) -> None:
    _assert_disabled(make_client(odp_disabled=True), collector, caplog)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes"])
def test_odp_disabled_by_environment(make_client: ClientFactory, collector: OdpCollector,
                                     caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                     value: str) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_DISABLED", value)
    _assert_disabled(make_client(), collector, caplog)


def test_environment_false_keeps_odp_on(make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_DISABLED", "0")
    assert make_client().send_odp_event("a", {"fs_user_id": "u"})


@pytest.mark.skipif(not HAS_NATIVE_ODP, reason="OptimizelySdkSettings exists on optimizely-sdk 5.x only")
def test_odp_disabled_by_sdk_settings(make_client: ClientFactory, collector: OdpCollector,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings

    settings = OptimizelySdkSettings(odp_disabled=True)
    client = make_client(settings=settings)
    _assert_disabled(client, collector, caplog)
    assert settings.odp_event_manager is None, "the caller's settings object is not changed"


def test_not_integrated_datafile(make_client: ClientFactory, collector: OdpCollector,
                                 caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(datafile=json.dumps(sample_datafile()))
    result = client.send_odp_event("purchase", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.ODP_NOT_INTEGRATED
    assert "ODP is not integrated." in log_lines(caplog, logging.ERROR)
    assert collector.request_count() == 0


def test_invalid_client_reports_sdk_not_ready(sdk_logger: logging.Logger) -> None:
    client = OdpOptimizely(datafile="not a datafile", logger=sdk_logger, event_dispatcher=RecordingEventDispatcher())
    result = client.send_odp_event("purchase", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.SDK_NOT_READY
    client.close()


class FailingCloseManager(EventManager):
    def send(self, event: OdpEvent) -> SendResult:
        return ACCEPTED

    def close(self, timeout: float | None = None) -> bool:
        raise RuntimeError("the caller's manager failed")


class RecordingProcessor:
    """The base client's event processor: records that the client stopped it."""

    stopped = False

    def process(self, user_event: Any) -> None: ...

    def stop(self) -> None:
        self.stopped = True


def test_close_stops_the_base_client_even_when_a_custom_manager_fails_to_close(
        make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    processor = RecordingProcessor()
    client = make_client(odp_event_manager=FailingCloseManager(), event_processor=processor)
    client.close()  # does not raise into the application
    assert processor.stopped, "the base client was closed all the same"
    assert any("could not be closed: RuntimeError" in line for line in log_lines(caplog, logging.ERROR))
    result = client.send_odp_event("after", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.CLOSED


def test_send_after_close_reports_closed(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    assert client.send_odp_event("before", {"fs_user_id": "u"})
    client.close()
    client.close()  # idempotent
    assert [e["action"] for e in collector.events] == ["before"], "close delivers what was accepted"
    result = client.send_odp_event("after", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.CLOSED


def test_result_says_accepted_in_the_flutter_and_go_ways(make_client: ClientFactory) -> None:
    result = make_client().send_odp_event("a", {"k": "v"})
    assert result.success is True and bool(result) is True
    refused = make_client().send_odp_event("", {"k": "v"})
    assert refused.success is False and str(refused.reason) == "invalidAction"


def test_stats_count_accepted_and_delivered(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    for i in range(25):
        assert client.send_odp_event("a", {"fs_user_id": str(i)})
    assert client.flush(10)
    stats = client.odp_stats()
    assert stats["accepted"] == 25 and stats["delivered"] == 25
    assert stats["queued"] == 0 and stats["in_flight"] == 0 and stats["dropped_total"] == 0
    assert collector.event_count() == 25


def test_plain_http_remote_host_gets_a_warning(make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    make_client(datafile=json.dumps(sample_datafile("http://odp.example.invalid", API_KEY)))
    warnings = log_lines(caplog, logging.WARNING)
    assert any("plain http://" in line and "odp.example.invalid" in line for line in warnings)


def test_loopback_and_https_hosts_get_no_warning(make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    make_client()
    make_client(datafile=json.dumps(sample_datafile("https://api.zaius.com", API_KEY)))
    assert not any("plain http://" in line for line in log_lines(caplog, logging.WARNING))


def test_tls_verification_stays_on() -> None:
    from optimizely_odp_ext.transport import Transport

    transport = Transport()
    assert transport.session.verify is True
    transport.close()


def test_a_custom_manager_is_started_with_the_sdk_logger_center_and_integration(
    make_client: ClientFactory, collector: OdpCollector, sdk_logger: logging.Logger,
) -> None:
    class Recording(EventManager):
        def __init__(self) -> None:
            self.events: list[OdpEvent] = []
            self.started_with: dict[str, Any] = {}

        def start(self, *, logger: Any, notification_center: Any, integration: Any) -> None:
            self.started_with = {"logger": logger, "center": notification_center, "integration": integration}

        def send(self, event: OdpEvent) -> SendResult:
            self.events.append(event)
            return ACCEPTED

    manager = Recording()
    client = make_client(odp_event_manager=manager)
    assert client.send_odp_event("custom", {"fs_user_id": "u"})
    assert manager.started_with["center"] is client.notification_center
    assert manager.started_with["logger"] is client.logger
    assert manager.started_with["integration"] == client.odp_integration
    [event] = manager.events
    assert event.integration == client.odp_integration and event.action == "custom"
    assert collector.request_count() == 0


def test_non_string_scalar_identifiers_and_scalar_data_keys_are_sent_as_the_official_sends_them(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    client = make_client()
    calls: list[tuple[dict[str, Any], dict[Any, Any] | None]] = [
        ({"fs_user_id": 123}, None),
        ({"FS-USER-ID": 1.5, "email": None}, None),
        ({"vuid": True, "": "an empty key"}, None),
        ({"fs_user_id": "u"}, {1: "one", 2.5: "two and a half", None: "null"}),
    ]
    for identifiers, data in calls:
        assert client.send_odp_event("numbers", identifiers, data=data), identifiers
    client.flush(10)
    sent = {json.dumps(event["identifiers"]) for request in collector.requests for event in json.loads(request.body)}
    assert sent == {'{"fs_user_id": 123}', '{"email": null, "fs_user_id": 1.5}',
                    '{"vuid": true, "": "an empty key"}', '{"fs_user_id": "u"}'}
    with_keys = next(event for request in collector.requests for event in json.loads(request.body)
                     if event["identifiers"] == {"fs_user_id": "u"})
    assert {k: with_keys["data"][k] for k in ("1", "2.5", "null")} == {"1": "one", "2.5": "two and a half",
                                                                        "null": "null"}


def test_odp_is_disabled_is_logged_once(make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    make_client(odp_disabled=True)
    assert [line for line in log_lines(caplog, logging.DEBUG) if "ODP is disabled" in line] == ["ODP is disabled."]


def test_after_close_the_official_shutdown_wording_comes_first(make_client: ClientFactory,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    client.close()
    caplog.clear()
    result = client.send_odp_event("late", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.CLOSED
    assert result.message.startswith("ODP event queue is shutdown, not accepting events.")
    assert log_lines(caplog) == [result.message]
    assert [r.levelno for r in caplog.records if r.getMessage() == result.message] == [logging.WARNING]
