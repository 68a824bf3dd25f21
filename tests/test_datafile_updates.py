"""The integration follows datafile updates from a polling config manager on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory, log_lines
from optimizely.config_manager import PollingConfigManager

from optimizely_odp_ext import BatchEventManager, DiscardReason, IntegrationState, OdpIntegration
from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

_revision = iter(range(100, 10_000))


def datafile(host: str | None = None, key: str | None = None) -> dict[str, Any]:
    content = sample_datafile(host, key)
    content["revision"] = str(next(_revision))  # the SDK ignores a datafile with the same revision
    return content


@pytest.fixture
def server() -> Iterator[DatafileServer]:
    with DatafileServer() as running:
        yield running


def polling_manager(server: DatafileServer, logger: logging.Logger) -> PollingConfigManager:
    """Polls the loopback server; the test triggers each poll with fetch_datafile()."""
    return PollingConfigManager(url=server.url, update_interval=3600, blocking_timeout=5, logger=logger)


def test_integration_added_changed_and_removed(make_client: ClientFactory, collector: OdpCollector,
                                               server: DatafileServer, sdk_logger: logging.Logger,
                                               caplog: pytest.LogCaptureFixture) -> None:
    server.set_datafile(datafile())
    manager = polling_manager(server, sdk_logger)
    assert manager.get_config() is not None
    client = make_client(config_manager=manager, odp_event_manager=BatchEventManager(flush_interval=60))
    assert client.odp_state is IntegrationState.NOT_INTEGRATED
    assert client.send_odp_event("early", {"fs_user_id": "u"}).reason is DiscardReason.ODP_NOT_INTEGRATED

    # added
    server.set_datafile(datafile(collector.url, API_KEY))
    manager.fetch_datafile()
    assert client.odp_integration == OdpIntegration(collector.url, API_KEY)
    assert client.send_odp_event("first-host", {"fs_user_id": "u"})

    # changed: host and key; the event accepted before goes to the old integration
    with OdpCollector(api_key="second-key") as second:
        server.set_datafile(datafile(second.url, "second-key"))
        manager.fetch_datafile()
        assert client.odp_integration == OdpIntegration(second.url, "second-key")
        assert client.send_odp_event("second-host", {"fs_user_id": "u"})
        assert client.flush(10)
        assert [e["action"] for e in collector.events] == ["first-host"]
        assert [e["action"] for e in second.events] == ["second-host"]
        assert second.requests[0].headers["x-api-key"] == "second-key"

    # removed
    server.set_datafile(datafile())
    manager.fetch_datafile()
    assert client.odp_state is IntegrationState.NOT_INTEGRATED
    assert client.send_odp_event("late", {"fs_user_id": "u"}).reason is DiscardReason.ODP_NOT_INTEGRATED
    assert any("secon" not in line and "key" in line for line in log_lines(caplog, logging.INFO))
    assert not any("second-key" in line or API_KEY in line for line in log_lines(caplog, logging.DEBUG)), \
        "the API key never appears in full in the logs"


def test_events_sent_before_the_datafile_are_held_then_delivered(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
) -> None:
    manager = polling_manager(server, sdk_logger)  # the server answers 503: no datafile yet
    client = make_client(config_manager=manager)
    assert client.odp_state is IntegrationState.UNDETERMINED
    for i in range(3):
        assert client.send_odp_event("early", {"fs_user_id": str(i)}), "held, not discarded"
    assert client.odp_stats()["held_for_datafile"] == 3
    assert collector.request_count() == 0

    server.set_datafile(datafile(collector.url, API_KEY))
    manager.fetch_datafile()
    assert client.flush(10)
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == ["0", "1", "2"]
    assert client.odp_stats()["held_for_datafile"] == 0


def test_held_events_are_discarded_when_the_datafile_says_not_integrated(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = polling_manager(server, sdk_logger)
    client = make_client(config_manager=manager)
    assert client.send_odp_event("early", {"fs_user_id": "u"})
    server.set_datafile(datafile())
    manager.fetch_datafile()
    assert client.flush(5)
    assert client.odp_stats()["discarded_not_integrated"] == 1
    assert any("odpNotIntegrated" in line for line in log_lines(caplog, logging.ERROR))
    assert collector.request_count() == 0


def test_flush_times_out_while_the_datafile_is_missing(make_client: ClientFactory, server: DatafileServer,
                                                       sdk_logger: logging.Logger) -> None:
    client = make_client(config_manager=polling_manager(server, sdk_logger))
    assert client.send_odp_event("early", {"fs_user_id": "u"})
    assert client.flush(0.05) is False
    client.close(timeout=0.05)
    assert client.odp_stats()["held_for_datafile"] == 0
