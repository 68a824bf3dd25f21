"""The datafile's ODP entry: a usable one, a malformed one (never an exception), its URL."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory, log_lines

from optimizely_odp_ext import DiscardReason, IntegrationState, OdpIntegration, SendResult
from optimizely_odp_ext.integration import integration_from_entry, mask_key
from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

SECRET_KEY = "W4WzcEs-ABgXorzY7h1LCQ"


@pytest.mark.parametrize(("host", "url"), [
    ("https://api.zaius.com", "https://api.zaius.com/v3/events"),
    ("https://api.zaius.com/", "https://api.zaius.com/v3/events"),
    ("https://h/base", "https://h/base/v3/events"),
    ("https://h/base/", "https://h/base/v3/events"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v3/events"),
    ("HTTPS://H.example:443/a/b", "https://H.example:443/a/b/v3/events"),
])
def test_events_url_is_built_from_scheme_host_and_path(host: str, url: str) -> None:
    assert OdpIntegration(host, "k").events_url == url


@pytest.mark.parametrize(("host", "warns"), [
    ("http://odp.example.com", True),
    ("http://127.0.0.1.nip.io", True),
    ("http://localhost.attacker.example", True),
    ("http://127.example", True),
    ("http://[::2]:80", True),
    ("http://localhost:8080", False),
    ("http://LOCALHOST", False),
    ("http://127.0.0.1:9", False),
    ("http://127.1.2.3", False),
    ("http://[::1]:8080", False),
    ("https://odp.example.com", False),
])
def test_plain_http_warning_decides_on_the_parsed_host(host: str, warns: bool) -> None:
    assert OdpIntegration(host, "k").is_plain_http_remote is warns


@pytest.mark.parametrize(("host", "key", "problem"), [
    (123, SECRET_KEY, "host is not a string (int)"),
    ("", SECRET_KEY, "host is empty"),
    ("https://h", 123, "publicKey is not a string (int)"),
    ("https://h", "", "publicKey is empty"),
    ("https://h", None, "publicKey is not a string (NoneType)"),
    (None, SECRET_KEY, "host is not a string (NoneType)"),
    ("https://h", SECRET_KEY + "\n", "cannot be sent as an HTTP header"),
    ("https://h", " " + SECRET_KEY, "cannot be sent as an HTTP header"),
    ("https://h", "W4Wz cEs", "cannot be sent as an HTTP header"),
    ("ftp://h", SECRET_KEY, "is not an http(s) URL"),
    ("api.zaius.com", SECRET_KEY, "is not an http(s) URL"),
    ("https://", SECRET_KEY, "has no host name"),
    ("https://h/base?tenant=7", SECRET_KEY, "has a query string"),
    ("https://h/base?", SECRET_KEY, "has a query string"),
    ("https://h/base#x", SECRET_KEY, "has a fragment"),
    ("https://h:port", SECRET_KEY, "is not a URL"),
    ("https://h\n", SECRET_KEY, "whitespace or control characters"),
])
def test_malformed_entries_say_why_and_never_show_the_key(host: Any, key: Any, problem: str) -> None:
    entry = integration_from_entry(host, key)
    assert entry.integration is None
    assert entry.problem is not None and problem in entry.problem
    assert SECRET_KEY not in entry.problem


def test_an_entry_without_host_and_key_is_simply_not_integrated() -> None:
    assert integration_from_entry(None, None) == (None, None)
    assert integration_from_entry("", "") == (None, None)


@pytest.mark.parametrize("key", [None, "", 123, 1.5, ["k"], "short", SECRET_KEY])
def test_mask_key_never_raises_and_never_shows_a_key(key: Any) -> None:
    masked = mask_key(key)
    assert isinstance(masked, str)
    if isinstance(key, str) and key:
        assert masked != key and key not in masked


def _datafile_with_entry(host: Any, key: Any) -> str:
    datafile = sample_datafile("https://unused.example", "unused")
    datafile["integrations"] = [{"key": "odp", "host": host, "publicKey": key}]
    return json.dumps(datafile)


MALFORMED = [
    pytest.param(123, SECRET_KEY, id="host-int"),
    pytest.param("https://api.zaius.com", 123, id="key-int"),
    pytest.param("https://api.zaius.com", SECRET_KEY + "\n", id="key-newline"),
    pytest.param("https://api.zaius.com/base?tenant=7", SECRET_KEY, id="host-query"),
    pytest.param("ftp://api.zaius.com", SECRET_KEY, id="host-not-http"),
]


@pytest.mark.parametrize(("host", "key"), MALFORMED)
def test_a_malformed_entry_builds_a_client_that_is_not_integrated(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture, host: Any, key: Any,
) -> None:
    from optimizely.optimizely import Optimizely

    from optimizely_odp_ext.testing import RecordingEventDispatcher

    datafile = _datafile_with_entry(host, key)
    official = Optimizely(datafile=datafile, skip_json_validation=True, event_dispatcher=RecordingEventDispatcher())
    assert official.is_valid
    if hasattr(official, "close"):
        official.close()
    caplog.clear()

    client = make_client(datafile=datafile, skip_json_validation=True)

    assert client.is_valid and client.odp_state is IntegrationState.NOT_INTEGRATED
    malformed = [line for line in log_lines(caplog, logging.ERROR) if "malformed" in line]
    assert len(malformed) == 1, "one clear error line"
    result = client.send_odp_event("purchase", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.ODP_NOT_INTEGRATED
    assert result.message.startswith("ODP is not integrated.") and "malformed" in result.message
    assert client.create_user_context("u") is not None
    assert not any(SECRET_KEY in line for line in log_lines(caplog, logging.DEBUG)), \
        "the key is never logged in full, at any level"


def test_a_datafile_update_to_a_malformed_entry_makes_sends_falsy(
    make_client: ClientFactory, collector: OdpCollector, sdk_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from optimizely.config_manager import PollingConfigManager

    good = sample_datafile(collector.url, API_KEY)
    with DatafileServer(good) as server:
        manager = PollingConfigManager(sdk_key="malformed-update", url=server.url, update_interval=3600,
                                       blocking_timeout=5, logger=sdk_logger, skip_json_validation=True)
        assert manager.get_config() is not None
        client = make_client(config_manager=manager)
        assert client.send_odp_event("before", {"fs_user_id": "u"})
        assert client.flush(10)

        bad = sample_datafile(collector.url, API_KEY)
        bad["revision"] = "8"
        bad["integrations"] = [{"key": "odp", "host": collector.url, "publicKey": API_KEY + "\r\n"}]
        server.set_datafile(bad)
        manager.fetch_datafile()

        assert client.odp_state is IntegrationState.NOT_INTEGRATED
        result = client.send_odp_event("after", {"fs_user_id": "u"})
        assert not result and result.reason is DiscardReason.ODP_NOT_INTEGRATED
        assert client.flush(5)
    assert [e["action"] for e in collector.events] == ["before"]
    assert sum("integration in the datafile is malformed" in line for line in log_lines(caplog, logging.ERROR)) == 1


def test_a_host_with_a_trailing_slash_delivers(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(datafile=json.dumps(sample_datafile(collector.url + "/", API_KEY)))
    assert client.send_odp_event("a", {"fs_user_id": "u"})
    assert client.flush(10)
    assert [e["action"] for e in collector.events] == ["a"]
    assert collector.requests[0].path == "/v3/events"


def test_a_lookalike_loopback_host_gets_the_plain_http_warning(make_client: ClientFactory,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    make_client(datafile=json.dumps(sample_datafile("http://127.0.0.1.nip.io", API_KEY)))
    assert any("plain http://" in line for line in log_lines(caplog, logging.WARNING))


def test_an_integration_and_a_send_result_are_immutable_values() -> None:
    integration = OdpIntegration("https://api.zaius.com", "key-1")
    result = SendResult.discarded(DiscardReason.QUEUE_FULL, "full")
    for value, same, other in ((integration, OdpIntegration("https://api.zaius.com", "key-1"),
                                OdpIntegration("https://api.zaius.com", "key-2")),
                               (result, SendResult(False, DiscardReason.QUEUE_FULL, "full"), SendResult(True))):
        assert value == same and hash(value) == hash(same) and value != other
        assert copy.deepcopy(value) == value and pickle.loads(pickle.dumps(value)) == value
    with pytest.raises(AttributeError):
        integration.host = "https://elsewhere.example"
    with pytest.raises(AttributeError):
        result.accepted = True
    assert "key-1" not in repr(integration) and not result and SendResult(True)
