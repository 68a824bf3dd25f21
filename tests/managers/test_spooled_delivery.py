"""BatchEventManager with a spool: what stays in the file, and what happens when it can't be used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import ClientFactory, log_lines

from optimizely_odp_ext import BatchEventManager, SettingError
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


def test_a_damaged_spool_is_renamed_aside_logged_shown_and_a_fresh_one_used(
        make_client: ClientFactory, collector: OdpCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "corrupt.sqlite"
    damaged = b"this is not a database" * 100
    path.write_bytes(damaged)
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path)))
    (aside,) = tmp_path.glob("corrupt.sqlite.damaged-*")
    assert aside.read_bytes() == damaged, "kept byte for byte"
    errors = log_lines(caplog, logging.ERROR)
    assert any(str(path) in line and str(aside) in line for line in errors), errors
    spool = client.odp_stats()["spool"]
    assert (spool["state"], spool["damaged_file"]) == ("recovered", str(aside))
    assert client.send_odp_event("durable", {"fs_user_id": "u"})
    assert SqliteSpool.inspect(path)["events"] in (0, 1), "the fresh spool is in use"
    assert client.flush(10)
    assert collector.event_count() == 1


def test_a_missing_spool_directory_is_created(make_client: ClientFactory, collector: OdpCollector,
                                             tmp_path: Path) -> None:
    path = tmp_path / "missing-directory" / "spool.sqlite"
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path), flush_interval=3600))
    assert client.send_odp_event("durable", {"fs_user_id": "u"})
    assert SqliteSpool.inspect(path)["events"] == 1
    assert client.odp_stats()["spool"]["state"] == "ok"
    assert client.flush(10)
    assert collector.event_count() == 1


@pytest.mark.parametrize("make_bad", ["parent is a file", "other database"])
def test_a_spool_path_that_cannot_be_a_spool_is_a_setting_error(tmp_path: Path, make_bad: str) -> None:
    import sqlite3

    if make_bad == "parent is a file":
        (tmp_path / "file").write_text("x")
        path, cause = tmp_path / "file" / "spool.sqlite", "cannot create directory"
    else:
        path, cause = tmp_path / "app.db", "not an ODP event spool"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE users(id INTEGER)")
        conn.close()
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(SettingError, match=f"spool_path '{path}'.*{cause}"):
        BatchEventManager(spool_path=str(path))
    assert (path.read_bytes() if path.exists() else None) == before
