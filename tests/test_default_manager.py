"""The default manager without a spool is built on first use: constructing a client loads
none of its code, and the first events, from any number of threads, share one manager."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory

from optimizely_odp_ext import BatchEventManager, DiscardReason
from optimizely_odp_ext.testing import OdpCollector

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys
from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import sample_datafile

MANAGER_CODE = ("optimizely_odp_ext.managers.batch", "optimizely_odp_ext.transport", "optimizely_odp_ext.spool",
                "sqlite3")
def loaded():
    return sorted(name for name in MANAGER_CODE if name in sys.modules)

datafile = json.dumps(sample_datafile(sys.argv[1], sys.argv[2]))
used, unused = OdpOptimizely(datafile=datafile), OdpOptimizely(datafile=datafile)
report = {"after_construction": loaded()}
unused.close()
report["after_closing_an_unused_client"] = loaded()
report["sent"] = bool(used.send_odp_event("first", {"fs_user_id": "u"}))
report["flushed"] = used.flush(10)
report["after_the_first_event"] = loaded()
report["delivered"] = used.odp_stats()["delivered"]
report["unused_after_close"] = unused.send_odp_event("late", {"fs_user_id": "u"}).reason.value
report["unused_stats"] = {k: unused.odp_stats()[k] for k in ("accepted", "delivered", "queued")}
used.close()
print(json.dumps(report))
"""


def test_construction_loads_no_manager_code_until_the_first_event(collector: OdpCollector) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", SCRIPT, collector.url, str(collector.api_key)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["after_construction"] == [], "constructing a client loads no manager, transport or spool code"
    assert report["after_closing_an_unused_client"] == [], "closing a client that sent nothing loads none either"
    assert report["sent"] and report["flushed"] and report["delivered"] == 1
    loaded = report["after_the_first_event"]
    assert "optimizely_odp_ext.managers.batch" in loaded and "optimizely_odp_ext.transport" in loaded
    assert "sqlite3" not in loaded, "no spool configured, none loaded"
    assert report["unused_after_close"] == "closed"
    assert report["unused_stats"] == {"accepted": 0, "delivered": 0, "queued": 0}
    assert collector.event_count() == 1


def test_first_events_from_many_threads_share_one_manager(make_client: ClientFactory, collector: OdpCollector,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two builds overlap (they meet at a barrier): one manager is kept, the other is
    dropped unused, and every event is counted by the one kept."""
    from optimizely_odp_ext import client as client_module

    build, builds, overlap = client_module._build_default, itertools.count(), threading.Barrier(2)

    def overlapping_build(settings: Any) -> BatchEventManager:
        built = build(settings)
        if next(builds) < 2:
            overlap.wait(10)
        return built

    monkeypatch.setattr(client_module, "_build_default", overlapping_build)
    client = make_client()
    threads, per_thread = 8, 50
    start = threading.Barrier(threads)
    managers: list[object] = []
    refused: list[str] = []

    def send(first: int) -> None:
        start.wait(10)
        for i in range(first, first + per_thread):
            result = client.send_odp_event("race", {"fs_user_id": f"user-{i}"})
            if not result:
                refused.append(result.message)
        managers.append(client.odp_event_manager)

    senders = [threading.Thread(target=send, args=(k * per_thread,)) for k in range(threads)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    assert refused == [] and not overlap.broken
    assert next(builds) >= 2, "two builds overlapped"
    assert client.flush(10)
    assert len({id(manager) for manager in managers}) == 1 and isinstance(managers[0], BatchEventManager)
    stats = client.odp_stats()
    assert stats["accepted"] == stats["delivered"] == threads * per_thread, "one manager counted every event"
    assert collector.event_count() == threads * per_thread and collector.duplicates() == {}


def test_the_manager_is_built_with_the_settings_read_at_construction(
    make_client: ClientFactory, collector: OdpCollector, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment is read when the client is built, not again when its manager is."""
    monkeypatch.setenv("OPTIMIZELY_ODP_BATCH_SIZE", "7")
    client = make_client()
    monkeypatch.setenv("OPTIMIZELY_ODP_BATCH_SIZE", "not a number")
    assert client.send_odp_event("later", {"fs_user_id": "u"})
    manager = client.odp_event_manager
    assert isinstance(manager, BatchEventManager) and manager.settings.batch_size == 7
    assert manager.settings.sources["batch_size"] == "environment"
    assert client.flush(10) and collector.event_count() == 1


EXIT_SCRIPT = """
import atexit, json, sys
from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import sample_datafile

client = OdpOptimizely(datafile=json.dumps(sample_datafile(sys.argv[1], sys.argv[2])))

def shutdown():  # registered before the manager exists, so it runs before the library's exit hook
    assert client.send_odp_event("session_end", {"fs_user_id": "u"})
    if sys.argv[3] == "close":
        client.close()

atexit.register(shutdown)
if sys.argv[3] == "close":
    assert client.send_odp_event("runtime", {"fs_user_id": "u"})
"""


@pytest.mark.parametrize(("mode", "expected"), [("close", ["runtime", "session_end"]), ("exit", ["session_end"])])
def test_an_event_sent_from_the_applications_exit_hook_is_delivered(collector: OdpCollector, mode: str,
                                                                     expected: list[str]) -> None:
    """close: events sent before and from the app's exit hook, which closes the client; exit:
    the only event comes from the app's exit hook, and the interpreter's exit delivers it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, collector.url, str(collector.api_key), mode], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr[-3000:]
    assert sorted(e["action"] for e in collector.events) == expected


def test_a_manager_that_cannot_be_built_refuses_counts_and_logs(make_client: ClientFactory, collector: OdpCollector,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Loading the manager fails (say, a package upgraded in place under a running process):
    sends are refused with internalError and counted, odp_stats() and close() still work."""
    from optimizely_odp_ext import client as client_module

    def broken_build(settings: Any) -> BatchEventManager:
        raise ImportError("cannot import name 'BatchEventManager'")

    monkeypatch.setattr(client_module, "_build_default", broken_build)
    client = make_client()
    data = {"n": 1}
    result = client.send_odp_event("lost", {"fs_user_id": "u"}, data=data)
    assert not result and result.reason is DiscardReason.INTERNAL_ERROR and data == {"n": 1}
    stats = client.odp_stats()
    assert stats["refused"] == {"internalError": 1} and stats["accepted"] == 0
    client.close(timeout=1)
    assert any("could not be built: ImportError" in r.getMessage() for r in caplog.records)
    assert collector.request_count() == 0
