"""BatchEventManager with a spool: what stays in the file, and what happens when it can't be used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import ClientFactory, log_lines

from optimizely_odp_ext import BatchEventManager
from optimizely_odp_ext.spool import SqliteSpool
from optimizely_odp_ext.testing import OdpCollector

FAST_RETRY = {"retry_initial_backoff": 0.02, "retry_max_backoff": 0.1}


def test_acknowledged_and_refused_events_leave_the_spool(make_client: ClientFactory, collector: OdpCollector,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path), flush_interval=3600))
    collector.reject_events(lambda e: e["action"] == "poison")
    for i in range(20):
        assert client.send_odp_event("poison" if i == 3 else "ok", {"fs_user_id": str(i)})
    assert client.flush(10)
    client.close()
    assert collector.event_count() == 19
    assert SqliteSpool.inspect(path)["events"] == 0


def test_close_during_an_outage_leaves_events_for_the_next_start(make_client: ClientFactory,
                                                                 collector: OdpCollector, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "spool.sqlite")
    collector.respond_with(503)
    first = make_client(odp_event_manager=BatchEventManager(spool_path=path, **FAST_RETRY))
    for i in range(12):
        assert first.send_odp_event("kept", {"fs_user_id": str(i)})
    first.close(timeout=0.2)
    assert any("stay in the spool" in line for line in log_lines(caplog, logging.ERROR))
    assert SqliteSpool.inspect(path)["events"] == 12
    assert first.odp_stats()["dropped"].get("shutdown", 0) == 0, "spooled events are not given up"

    collector.reset_faults()
    second = make_client(odp_event_manager=BatchEventManager(spool_path=path))
    assert second.flush(10)
    assert sorted(int(e["identifiers"]["fs_user_id"]) for e in collector.events) == list(range(12))
    assert collector.duplicates() == {}


def test_a_corrupt_spool_is_reported_and_events_are_kept_in_memory(make_client: ClientFactory,
                                                                   collector: OdpCollector, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path)))
    errors = log_lines(caplog, logging.ERROR)
    assert any("ODP spool disabled, events are kept in memory only" in line and str(path) in line
               for line in errors)
    assert client.send_odp_event("memory", {"fs_user_id": "u"})
    assert client.flush(10)
    assert collector.event_count() == 1
    assert path.read_bytes().startswith(b"this is not a database"), "the file is left as it was"


def test_an_unwritable_spool_location_falls_back_to_memory(make_client: ClientFactory, collector: OdpCollector,
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing-directory" / "spool.sqlite"
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path)))
    assert any("kept in memory only" in line for line in log_lines(caplog, logging.ERROR))
    assert client.send_odp_event("memory", {"fs_user_id": "u"})
    assert client.flush(10)
    assert collector.event_count() == 1
