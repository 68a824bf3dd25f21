"""The integration follows datafile updates from a polling config manager on loopback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory, log_lines
from optimizely.config_manager import PollingConfigManager

from optimizely_odp_ext import (
    ODP_EVENTS_DROPPED,
    BatchEventManager,
    DiscardReason,
    EventManager,
    IntegrationState,
    OdpEvent,
    OdpIntegration,
    SendResult,
)
from optimizely_odp_ext.result import ACCEPTED
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


_sdk_keys = iter(range(1_000_000))


def polling_manager(server: DatafileServer, logger: logging.Logger) -> PollingConfigManager:
    """Polls the loopback server; the test triggers each poll with fetch_datafile(). (optimizely-sdk
    5.0 to 5.2 want an sdk_key even with a url; a fresh one keeps the SDK's registries apart.)"""
    return PollingConfigManager(sdk_key=f"test-sdk-key-{next(_sdk_keys)}", url=server.url, update_interval=3600,
                                blocking_timeout=5, logger=logger)


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


def test_held_events_are_dropped_counted_and_announced_when_the_datafile_says_not_integrated(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = polling_manager(server, sdk_logger)
    client = make_client(config_manager=manager)
    announced: list[tuple[str, int]] = []
    client.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: announced.append(a))
    for i in range(3):
        assert client.send_odp_event("early", {"fs_user_id": str(i)})
    server.set_datafile(datafile())
    manager.fetch_datafile()
    assert client.flush(5)
    stats = client.odp_stats()
    assert stats["accepted"] == 3 and stats["dropped"] == {"odpNotIntegrated": 3} and stats["dropped_total"] == 3
    assert stats["held_for_datafile"] == 0 and "discarded_not_integrated" not in stats
    assert announced == [("odpNotIntegrated", 3)]
    assert any("3 ODP events" in line and "odpNotIntegrated" in line for line in log_lines(caplog, logging.ERROR))
    assert collector.request_count() == 0


def test_flush_times_out_while_the_datafile_is_missing(make_client: ClientFactory, server: DatafileServer,
                                                       sdk_logger: logging.Logger) -> None:
    client = make_client(config_manager=polling_manager(server, sdk_logger))
    assert client.send_odp_event("early", {"fs_user_id": "u"})
    assert client.flush(0.05) is False
    client.close(timeout=0.05)
    assert client.odp_stats()["held_for_datafile"] == 0


@pytest.mark.parametrize("timeout", ["default", None])
def test_flush_without_a_timeout_is_bounded(make_client: ClientFactory, server: DatafileServer,
                                            sdk_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch,
                                            timeout: str | None) -> None:
    from optimizely_odp_ext import client as client_module

    assert client_module.DEFAULT_FLUSH_TIMEOUT == 30.0, "the documented default bound"
    monkeypatch.setattr(client_module, "DEFAULT_FLUSH_TIMEOUT", 0.2)
    client = make_client(config_manager=polling_manager(server, sdk_logger))
    assert client.send_odp_event("early", {"fs_user_id": "u"})
    outcome: list[bool] = []
    flushing = threading.Thread(target=lambda: outcome.append(client.flush() if timeout == "default"
                                                              else client.flush(None)), daemon=True)
    flushing.start()
    flushing.join(10)
    assert not flushing.is_alive(), "flush() came back although the datafile never did"
    assert outcome == [False]
    client.close(timeout=0)


def test_held_events_given_up_at_close_are_counted_announced_and_logged(
    make_client: ClientFactory, server: DatafileServer, sdk_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(config_manager=polling_manager(server, sdk_logger))
    announced: list[tuple[str, int]] = []
    client.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: announced.append(a))
    for i in range(4):
        assert client.send_odp_event("early", {"fs_user_id": str(i)})
    client.close(timeout=0.05)
    stats = client.odp_stats()
    assert stats["accepted"] == 4 and stats["dropped"] == {"sdkNotReady": 4} and stats["held_for_datafile"] == 0
    assert announced == [("sdkNotReady", 4)]
    assert any("4 ODP events held for a datafile that never arrived" in line
               for line in log_lines(caplog, logging.ERROR))


class BlockingData(dict):  # type: ignore[type-arg]
    """A caller's data whose copy waits until the test says so: it holds a send between its
    check that the client is open and the moment it holds the event (any preemption can)."""

    def __init__(self, entered: threading.Event, release: threading.Event, **items: Any) -> None:
        super().__init__(**items)
        self.entered, self.release = entered, release

    def __iter__(self) -> Iterator[Any]:  # overridden: dict() then copies through keys()
        return super().__iter__()

    def keys(self) -> Any:
        self.entered.set()
        self.release.wait(10)
        return super().keys()


def test_an_event_sent_while_close_runs_is_refused_not_held_forever(
    make_client: ClientFactory, server: DatafileServer, sdk_logger: logging.Logger,
) -> None:
    client = make_client(config_manager=polling_manager(server, sdk_logger))
    entered, release = threading.Event(), threading.Event()
    results: list[SendResult] = []
    sender = threading.Thread(target=lambda: results.append(
        client.send_odp_event("late", {"fs_user_id": "u"}, data=BlockingData(entered, release, n=1))))
    sender.start()
    assert entered.wait(10), "the send reached its copy of the data"
    client.close(timeout=0.05)
    release.set()
    sender.join(10)
    assert len(results) == 1 and not results[0] and results[0].reason is DiscardReason.CLOSED
    stats = client.odp_stats()
    assert stats["accepted"] == 0 and stats["held_for_datafile"] == 0 and stats["refused"] == {"closed": 1}
    assert client.flush(0.5) is True, "nothing accepted is left waiting"


class ParkingManager(EventManager):
    """Keeps the first ``capacity`` parked events (as a spool would), delivers nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.parked: list[OdpEvent] = []

    def send(self, event: OdpEvent) -> SendResult:
        return ACCEPTED

    def park(self, events: Sequence[OdpEvent]) -> int:
        self.parked = list(events)[: self.capacity]
        return len(self.parked)


def test_held_events_are_parked_at_close_and_only_the_rest_dropped(
    make_client: ClientFactory, server: DatafileServer, sdk_logger: logging.Logger,
) -> None:
    manager = ParkingManager(capacity=2)
    client = make_client(config_manager=polling_manager(server, sdk_logger), odp_event_manager=manager)
    for i in range(3):
        assert client.send_odp_event("early", {"fs_user_id": str(i)})
    client.close(timeout=0.05)
    assert [e.identifiers["fs_user_id"] for e in manager.parked] == ["0", "1"]
    stats = client.odp_stats()
    assert stats["dropped"] == {"sdkNotReady": 1} and stats["parked"] == 2 and stats["held_for_datafile"] == 0
    assert stats["accepted"] == stats["dropped_total"] + stats["parked"], "every accepted event accounted for"


class FullManager(EventManager):
    def send(self, event: OdpEvent) -> SendResult:
        return SendResult.discarded(DiscardReason.QUEUE_FULL, "full")


def test_held_events_the_manager_refuses_on_release_are_dropped_not_refused(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
) -> None:
    manager = polling_manager(server, sdk_logger)
    client = make_client(config_manager=manager, odp_event_manager=FullManager())
    announced: list[tuple[str, int]] = []
    client.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: announced.append(a))
    assert client.send_odp_event("early", {"fs_user_id": "u"})
    server.set_datafile(datafile(collector.url, API_KEY))
    manager.fetch_datafile()
    assert client.flush(5)
    stats = client.odp_stats()
    assert stats["accepted"] == 1 and stats["dropped"] == {"queueFull": 1} and stats["refused"] == {}
    assert announced == [("queueFull", 1)]


def test_a_datafile_change_while_the_default_manager_is_built_reaches_it(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first event builds the default manager, and a new datafile arrives while it is
    built. The manager still learns of it: the event, refused with the first key, moves to the
    new integration as it would with a manager built earlier."""
    from optimizely_odp_ext import client as client_module

    server.set_datafile(datafile(collector.url, "refused-key"))
    manager = polling_manager(server, sdk_logger)
    assert manager.get_config() is not None
    client = make_client(config_manager=manager)
    build = client_module._build_default
    with OdpCollector(api_key="second-key") as second:
        def build_while_the_datafile_changes(settings: Any) -> BatchEventManager:
            built = build(settings)
            server.set_datafile(datafile(second.url, "second-key"))
            update = threading.Thread(target=manager.fetch_datafile)  # as the polling thread would
            update.start()
            update.join(10)
            assert client.odp_integration == OdpIntegration(second.url, "second-key")
            return built

        monkeypatch.setattr(client_module, "_build_default", build_while_the_datafile_changes)
        assert client.send_odp_event("first", {"fs_user_id": "u"})
        assert client.flush(10)
        assert [e["action"] for e in second.events] == ["first"]
        assert collector.event_count() == 0 and collector.request_count() >= 1, "refused at the first key's host"


def test_of_two_datafile_updates_racing_to_tell_the_manager_the_newer_one_is_heard_last(
    make_client: ClientFactory, collector: OdpCollector, server: DatafileServer, sdk_logger: logging.Logger,
) -> None:
    """A datafile update reads its integration, and before the manager hears it a newer update
    is read and heard: the older one must not be the last the manager hears. Here a batch in
    flight during both updates has its key refused after them: it moves to the integration the
    manager heard last, which must be the newest."""
    server.set_datafile(datafile(collector.url, API_KEY))
    config_manager = polling_manager(server, sdk_logger)
    assert config_manager.get_config() is not None
    in_flight, answer = threading.Event(), threading.Event()

    def hold_then_refuse(event: dict[str, Any]) -> bool:
        in_flight.set()
        return answer.wait(10)  # then 401: this key is refused

    collector.reject_events(hold_then_refuse, status=401)
    newer_told: list[OdpIntegration] = []

    with OdpCollector(api_key="second-key") as second:
        class SlowToHear(BatchEventManager):
            def integration_changed(self, integration: OdpIntegration | None) -> None:
                if integration is not None and integration.api_key == "stale-key" and not newer_told:
                    server.set_datafile(datafile(second.url, "second-key"))
                    update = threading.Thread(target=config_manager.fetch_datafile)  # the polling thread
                    update.start()
                    update.join(10)
                    newer_told.append(integration)
                super().integration_changed(integration)

        client = make_client(config_manager=config_manager, odp_event_manager=SlowToHear(flush_interval=60))
        assert client.send_odp_event("first", {"fs_user_id": "u"})
        client.flush(0)  # send it now, without waiting
        assert in_flight.wait(10)
        server.set_datafile(datafile(collector.url, "stale-key"))  # refused too, were it the last heard
        config_manager.fetch_datafile()
        assert newer_told, "the newer update was read and told while the stale one was being told"
        assert client.odp_integration == OdpIntegration(second.url, "second-key")
        answer.set()
        assert client.flush(10)
        assert [e["action"] for e in second.events] == ["first"]
        assert collector.event_count() == 0
