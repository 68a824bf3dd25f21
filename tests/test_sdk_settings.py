"""The ODP fields of ``OptimizelySdkSettings`` (optimizely-sdk 5.x) keep working after the swap,
and how they rank against this package's own arguments and environment variables."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import pytest
from conftest import ClientFactory, log_lines

from optimizely_odp_ext import ODP_BATCH_FAILED, BatchEventManager, DiscardReason, OdpOptimizely
from optimizely_odp_ext.compat import HAS_NATIVE_ODP
from optimizely_odp_ext.sdk_adapter import OfficialEventManagerBridge
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher

pytestmark = pytest.mark.skipif(not HAS_NATIVE_ODP, reason="OptimizelySdkSettings exists on optimizely-sdk 5.x only")


def sdk_settings(**fields: Any) -> Any:
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings

    return OptimizelySdkSettings(**fields)


def test_flush_interval_zero_sends_at_once_and_wins_over_the_environment(
    make_client: ClientFactory, collector: OdpCollector, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_FLUSH_INTERVAL", "3600")
    client = make_client(settings=sdk_settings(odp_event_flush_interval=0))
    assert isinstance(client.odp_event_manager, BatchEventManager)
    assert client.odp_event_manager.settings.flush_interval == 0
    assert client.send_odp_event("at-once", {"fs_user_id": "u"})
    assert collector.wait_for_events(1, timeout=10), "no batching wait: sent without a flush()"


def test_request_timeout_from_the_sdk_settings_is_used(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client(settings=sdk_settings(odp_event_request_timeout=1, odp_event_flush_interval=0))
    assert client.odp_event_manager.settings.request_timeout == 1  # type: ignore[union-attr]
    failed = threading.Event()
    client.notification_center.add_notification_listener(ODP_BATCH_FAILED, lambda *args: failed.set())
    collector.set_delay(6)
    assert client.send_odp_event("slow", {"fs_user_id": "u"})
    assert failed.wait(4.5), "the request gave up after about 1 s, not the default 10 s"
    collector.set_delay(0)


def test_our_argument_wins_over_the_sdk_settings_and_says_so(make_client: ClientFactory,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from optimizely.odp.odp_event_manager import OdpEventManager

    ours = BatchEventManager(flush_interval=5)
    official = OdpEventManager()
    client = make_client(odp_event_manager=ours,
                         settings=sdk_settings(odp_event_manager=official, odp_event_flush_interval=0))
    assert client.odp_event_manager is ours and ours.settings.flush_interval == 5
    assert client.odp_manager.event_manager is not official, "the official manager is not started"
    assert not official.is_running
    warnings = log_lines(caplog, logging.WARNING)
    assert any("odp_event_manager is not used" in line for line in warnings)
    assert any("do not apply" in line for line in warnings)


def test_a_setting_we_cannot_take_is_logged_and_the_default_kept(make_client: ClientFactory,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(settings=sdk_settings(odp_event_flush_interval=7200))
    assert client.is_valid
    assert client.odp_event_manager.settings.flush_interval == 1.0  # type: ignore[union-attr]
    assert any("flush_interval" in line for line in log_lines(caplog, logging.WARNING))


def _recording_official_manager() -> Any:
    from optimizely.odp.odp_event_manager import OdpEventManager

    class Recording(OdpEventManager):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[Any, ...]] = []

        def send_event(self, type: str, action: str, identifiers: dict[str, Any], data: dict[str, Any]) -> None:
            self.calls.append((type, action, identifiers, data))
            super().send_event(type, action, identifiers, data)

    return Recording()


def test_a_callers_official_event_manager_gets_the_events_behind_our_validation(
    make_client: ClientFactory, collector: OdpCollector,
) -> None:
    official = _recording_official_manager()
    settings = sdk_settings(odp_event_manager=official)
    client = make_client(settings=settings)
    assert isinstance(client.odp_event_manager, OfficialEventManagerBridge)
    assert client.odp_manager.event_manager is official, "the base client drives it as it always did"
    assert official.is_running, "started with the datafile's ODP config, as the official client does"

    identifiers = {"FS-USER-ID": "u1"}
    assert client.send_odp_event("purchase", identifiers, data={"price": 9.5})
    refused = client.send_odp_event("bad", {"fs_user_id": "u1"}, data={"x": math.nan})
    assert not refused and refused.reason is DiscardReason.INVALID_DATA
    assert official.calls == [("fullstack", "purchase", {"fs_user_id": "u1"}, {"price": 9.5})]
    assert identifiers == {"FS-USER-ID": "u1"}, "the caller's dict is not touched"
    assert client.flush(5)
    assert collector.wait_for_events(1, timeout=10)
    assert [e["action"] for e in collector.events] == ["purchase"]
    client.close()
    assert not official.is_running, "the base client's close stops it"
    assert settings.odp_event_manager is official


def test_held_events_reach_a_callers_official_manager_once_the_datafile_comes(
    make_client: ClientFactory, collector: OdpCollector, sdk_logger: logging.Logger,
) -> None:
    from optimizely.config_manager import PollingConfigManager

    from optimizely_odp_ext.testing import DatafileServer, sample_datafile

    with DatafileServer() as server:
        manager = PollingConfigManager(sdk_key="official-held", url=server.url, update_interval=3600,
                                       blocking_timeout=5, logger=sdk_logger)
        official = _recording_official_manager()
        client = make_client(config_manager=manager, settings=sdk_settings(odp_event_manager=official))
        assert client.send_odp_event("early", {"fs_user_id": "u"}), "held until the datafile"
        server.set_datafile(sample_datafile(collector.url, "test-odp-key"))
        manager.fetch_datafile()
        assert client.flush(5)
        assert collector.wait_for_events(1, timeout=10)
    assert [e["action"] for e in collector.events] == ["early"]


def test_an_official_manager_the_official_client_rejects_makes_the_client_invalid(datafile: str) -> None:
    from optimizely.optimizely import Optimizely

    class NotAnEventManager:
        def send_event(self, *args: Any) -> None:
            pass  # no is_running, stop or update_config

    settings = sdk_settings(odp_event_manager=NotAnEventManager())
    official = Optimizely(datafile=datafile, settings=settings, event_dispatcher=RecordingEventDispatcher())
    ours = OdpOptimizely(datafile=datafile, settings=settings, event_dispatcher=RecordingEventDispatcher())
    assert official.is_valid is False and ours.is_valid is False
    result = ours.send_odp_event("a", {"fs_user_id": "u"})
    assert not result and result.reason is DiscardReason.SDK_NOT_READY
    ours.close()


def test_odp_disabled_in_the_settings_with_an_argument_false_is_still_disabled(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.clear()
    client = make_client(odp_disabled=False, settings=sdk_settings(odp_disabled=True))
    assert client.send_odp_event("a", {"fs_user_id": "u"}).reason is DiscardReason.ODP_NOT_ENABLED
    assert [line for line in log_lines(caplog, logging.DEBUG) if "ODP is disabled" in line] == ["ODP is disabled."]
