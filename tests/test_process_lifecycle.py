"""Crashes, forks and interpreter exit, each in a subprocess talking to the collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import API_KEY

from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import json, os, sys
from optimizely_odp_ext import BatchEventManager, OdpOptimizely
from optimizely_odp_ext.testing import RecordingEventDispatcher
DATAFILE = sys.argv[1]
def client(**settings):
    return OdpOptimizely(datafile=DATAFILE, event_dispatcher=RecordingEventDispatcher(),
                         odp_event_manager=BatchEventManager(**settings))
"""


def run_script(body: str, datafile: str, timeout: float = 60, **popen: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, datafile], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def finish(process: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


@pytest.fixture
def datafile(collector: OdpCollector) -> str:
    return json.dumps(sample_datafile(collector.url, API_KEY))


def actions(collector: OdpCollector) -> list[str]:
    return sorted(e["action"] for e in collector.events)


def test_exit_without_close_delivers_pending_events(collector: OdpCollector, datafile: str) -> None:
    finish(run_script("""
        c = client(flush_interval=3600)
        for i in range(50):
            assert c.send_odp_event("at-exit", {"fs_user_id": str(i)})
        # no flush, no close: the interpreter exits
    """, datafile))
    assert collector.event_count() == 50


def test_exit_never_hangs_on_an_unreachable_server(collector: OdpCollector, datafile: str) -> None:
    collector.set_delay(30)
    started = time.monotonic()
    finish(run_script("""
        c = client(flush_interval=3600, exit_timeout=0.5, request_timeout=20)
        c.send_odp_event("stuck", {"fs_user_id": "u"})
    """, datafile), timeout=60)
    assert time.monotonic() - started < 20, "exit waited about exit_timeout, not the 30 s answer"


def test_fork_child_works_and_parent_events_are_not_sent_twice(collector: OdpCollector, datafile: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    finish(run_script("""
        c = client(flush_interval=3600)
        c.send_odp_event("parent-before-fork", {"fs_user_id": "p"})
        pid = os.fork()
        if pid == 0:  # the child: like a gunicorn --preload worker
            ok = c.send_odp_event("child", {"fs_user_id": "c"})
            delivered = c.flush(20)
            c.close()
            os._exit(0 if ok and delivered else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        c.send_odp_event("parent-after-fork", {"fs_user_id": "p"})
        assert c.flush(20)
        c.close()
    """, datafile))
    assert actions(collector) == ["child", "parent-after-fork", "parent-before-fork"]
    assert collector.duplicates() == {}


def test_kill_9_with_a_spool_then_restart_delivers_everything_with_original_ids(
    collector: OdpCollector, datafile: str, tmp_path: Path,
) -> None:
    spool = tmp_path / "odp.sqlite"
    collector.respond_with(503)  # ODP is down while the first process runs
    first = run_script(f"""
        c = client(spool_path={str(spool)!r}, retry_initial_backoff=0.05, retry_max_backoff=0.1, batch_size=25)
        for i in range(100):
            assert c.send_odp_event("durable", {{"fs_user_id": str(i)}})
        print("accepted", flush=True)
        import time
        time.sleep(60)
    """, datafile)
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "accepted"
    assert collector.wait_for_requests(2), "the first process tried (and failed) to deliver"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    seen_ids = {e["identifiers"]["fs_user_id"]: e["data"]["idempotence_id"]
                for r in collector.requests for e in r.events}
    assert oct(spool.stat().st_mode & 0o777) == "0o600"

    collector.reset_faults()
    finish(run_script(f"""
        c = client(spool_path={str(spool)!r})
        assert c.flush(20)
        c.close()
        from optimizely_odp_ext.spool import SqliteSpool
        assert SqliteSpool.inspect({str(spool)!r})["events"] == 0
    """, datafile))
    delivered = {e["identifiers"]["fs_user_id"]: e["data"]["idempotence_id"] for e in collector.events}
    assert sorted(delivered, key=int) == [str(i) for i in range(100)]
    # At-least-once: only a batch in flight at the kill (one probe of 25 while ODP fails)
    # may arrive twice, if the server handled it after the process died.
    duplicates = collector.duplicates()
    assert len(duplicates) <= 25 and set(duplicates.values()) <= {2}
    for user, idempotence_id in seen_ids.items():
        assert delivered[user] == idempotence_id, "the restarted process sends the original bytes"


def test_a_second_process_on_the_same_spool_is_refused_and_falls_back_to_memory(
    collector: OdpCollector, datafile: str, tmp_path: Path,
) -> None:
    spool = tmp_path / "shared.sqlite"
    holder = run_script(f"""
        c = client(spool_path={str(spool)!r})
        print("holding", flush=True)
        sys.stdin.readline()
        c.close()
    """, datafile, stdin=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    try:
        out = finish(run_script(f"""
            import logging
            logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(message)s")
            c = OdpOptimizely(datafile=DATAFILE, event_dispatcher=RecordingEventDispatcher(),
                              logger=logging.getLogger("app"),
                              odp_event_manager=BatchEventManager(spool_path={str(spool)!r}))
            assert c.send_odp_event("memory", {{"fs_user_id": "u"}})
            assert c.flush(20)
            c.close()
        """, datafile))
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        finish(holder)
    assert "in use by another process" in out and "kept in memory only" in out
    assert actions(collector) == ["memory"]


@pytest.mark.parametrize("manager", ["SyncEventManager", "BatchEventManager"])
def test_exit_waits_exit_timeout_not_the_request_timeout(collector: OdpCollector, datafile: str, manager: str) -> None:
    collector.set_delay(60)  # takes the request, never answers in time
    began = time.monotonic()
    finish(run_script(f"""
        from optimizely_odp_ext import {manager}
        c = OdpOptimizely(datafile=DATAFILE, event_dispatcher=RecordingEventDispatcher(),
                          odp_event_manager={manager}(request_timeout=10, exit_timeout=1.0))
        assert c.send_odp_event("at-exit", {{"fs_user_id": "u"}})
        # no close: the interpreter exits, and the exit hook may spend exit_timeout on delivery
    """, datafile))
    assert time.monotonic() - began < 6, "bounded by exit_timeout (1 s), not request_timeout (10 s)"


def test_several_clients_share_one_exit_timeout(collector: OdpCollector, datafile: str) -> None:
    collector.set_delay(60)  # takes the requests, never answers in time
    process = run_script("""
        import time
        clients = [client(request_timeout=10, exit_timeout=1.0) for _ in range(3)]
        for c in clients:
            assert c.send_odp_event("at-exit", {"fs_user_id": "u"})
        print(time.monotonic(), flush=True)  # the exit begins (CLOCK_MONOTONIC: the same in every process)
    """, datafile)
    exit_began = float(finish(process))
    assert time.monotonic() - exit_began < 2.5, "one exit_timeout (1 s) for all, not one each (3 s)"


def test_a_forked_child_counts_only_its_own_events(collector: OdpCollector, datafile: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    out = finish(run_script("""
        c = client(flush_interval=3600)
        for i in range(5):
            assert c.send_odp_event("parent", {"fs_user_id": str(i)})
        pid = os.fork()
        if pid == 0:  # the child: like a gunicorn --preload worker
            assert c.send_odp_event("child", {"fs_user_id": "c"})
            flushed = c.flush(20)
            stats = c.odp_stats()
            print(json.dumps({"flushed": flushed, **{k: stats[k] for k in ("accepted", "delivered", "queued")}}),
                  flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c.flush(20) and c.odp_stats()["accepted"] == c.odp_stats()["delivered"] == 5
        c.close()
    """, datafile))
    assert json.loads(out) == {"flushed": True, "accepted": 1, "delivered": 1, "queued": 0}
    assert actions(collector) == ["child"] + ["parent"] * 5


def datafile_never_comes(url: str) -> str:
    return f"""
        import time
        from optimizely.config_manager import PollingConfigManager
        from optimizely_odp_ext import ODP_EVENTS_DROPPED
        c = OdpOptimizely(config_manager=PollingConfigManager(sdk_key="test-sdk-key-fork", url={url!r},
                                                              update_interval=3600, blocking_timeout=0),
                          event_dispatcher=RecordingEventDispatcher())
        drops = []
        c.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: drops.append(a))
        for i in range(3):
            assert c.send_odp_event("held", {{"fs_user_id": str(i)}})
    """


def test_events_the_parent_holds_for_its_datafile_are_not_the_childs(datafile: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    with DatafileServer() as server:  # no datafile: the client holds its events
        out = finish(run_script(datafile_never_comes(server.url) + """
        pid = os.fork()
        if pid == 0:
            began = time.monotonic()
            flushed = c.flush(10)
            took = time.monotonic() - began
            held = c.odp_stats()["held_for_datafile"]
            c.close(1)
            stats = c.odp_stats()
            print(json.dumps({"flushed": flushed, "quick": took < 5, "held": held, "accepted": stats["accepted"],
                              "dropped": stats["dropped"], "drops": drops}), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c.odp_stats()["held_for_datafile"] == 3, "the parent still holds its own"
        c.close(0)
        """, datafile))
    assert json.loads(out) == {"flushed": True, "quick": True, "held": 0, "accepted": 0, "dropped": {}, "drops": []}


def test_events_held_for_a_datafile_that_never_came_are_accounted_for_at_exit(datafile: str) -> None:
    with DatafileServer() as server:
        out = finish(run_script(datafile_never_comes(server.url) + """
        c.notification_center.add_notification_listener(ODP_EVENTS_DROPPED, lambda *a: print(json.dumps(a)))
        # no close: the interpreter exits
        """, datafile))
    assert [json.loads(line) for line in out.splitlines()] == [["sdkNotReady", 3]]
