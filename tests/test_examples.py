"""The examples run and deliver what they say (the Flask and gunicorn ones where those are installed)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import API_KEY, ClientFactory

from optimizely_odp_ext import DiscardReason
from optimizely_odp_ext.testing import OdpCollector

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example_env(collector: OdpCollector | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODP_EXAMPLE_", "OPTIMIZELY_ODP_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if collector is not None:
        env.update(ODP_EXAMPLE_COLLECTOR_URL=collector.url, ODP_EXAMPLE_API_KEY=API_KEY)
    env.update(extra)
    return env


def run_example(name: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, collector: OdpCollector) -> ModuleType:
    """Import an example as a fresh module, its environment pointing at ``collector``."""
    monkeypatch.setenv("ODP_EXAMPLE_COLLECTOR_URL", collector.url)
    monkeypatch.setenv("ODP_EXAMPLE_API_KEY", API_KEY)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Context:
    def __init__(self, remaining: float) -> None:
        self.remaining = remaining

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining * 1000)


# -- lambda_handler.py --------------------------------------------------------------------------
def test_lambda_handler_runs_on_its_own() -> None:
    out = run_example("lambda_handler.py", example_env())
    assert out.count('"delivered": true') == 2
    assert '"refused": ["invalidAction"]' in out
    assert "ODP: 3 of 3 accepted events delivered in 2 requests" in out
    assert "received 3 events" in out


def test_lambda_handler_delivers_to_the_configured_collector(collector: OdpCollector) -> None:
    out = run_example("lambda_handler.py", example_env(collector))
    assert "local collector" not in out
    assert [(e["action"], e["identifiers"]["fs_user_id"]) for e in collector.events] == [
        ("viewed", "user-1"), ("purchase", "user-1"), ("purchase", "user-2")]
    assert [len(r.events) for r in collector.requests] == [2, 1], "one flush per invocation"


def test_lambda_flush_stays_within_the_invocations_remaining_time(monkeypatch: pytest.MonkeyPatch,
                                                                  collector: OdpCollector) -> None:
    module = load_example("lambda_handler", monkeypatch, collector)
    try:
        assert module.flush_budget(object()) == module.FLUSH_TIMEOUT
        assert module.flush_budget(Context(1.0)) == pytest.approx(0.5)
        collector.respond_with(503)
        started = time.monotonic()
        response = module.handler({"user_id": "u", "events": [{"action": "first"}]}, Context(1.0))
        assert time.monotonic() - started < 1.0, "returned before the invocation's time ran out"
        assert json.loads(response["body"])["delivered"] is False
        collector.reset_faults()
        response = module.handler({"user_id": "u", "events": [{"action": "second"}]}, Context(10))
        assert json.loads(response["body"])["delivered"] is True
        assert [e["action"] for e in collector.events] == ["first", "second"], "kept for the next invocation"
        assert collector.duplicates() == {}
    finally:
        module.client.close()


# -- custom_event_manager.py --------------------------------------------------------------------
def test_custom_event_manager_demo_delivers_through_the_queue() -> None:
    out = run_example("custom_event_manager.py", example_env())
    assert "accepted, accepted, accepted, accepted, accepted, refused (invalidIdentifiers)" in out
    assert "the collector received 5 events: user-0, user-1, user-2, user-3, user-4" in out


def test_queue_event_manager_hands_over_json_and_integration_and_refuses_when_full(
        monkeypatch: pytest.MonkeyPatch, collector: OdpCollector, make_client: ClientFactory) -> None:
    module = load_example("custom_event_manager", monkeypatch, collector)
    work: queue.Queue[Any] = queue.Queue(maxsize=1)
    client = make_client(odp_event_manager=module.QueueEventManager(work))
    assert client.send_odp_event("first", {"fs_user_id": "u"})
    refused = client.send_odp_event("second", {"fs_user_id": "u"})
    assert not refused and refused.reason is DiscardReason.QUEUE_FULL
    item = work.get_nowait()
    assert item.integration == client.odp_integration
    assert json.loads(item.body)["action"] == "first"
    assert client.odp_stats()["refused"] == {"queueFull": 1}


# -- flask_app.py -------------------------------------------------------------------------------
def test_flask_app_sends_an_event_per_request_and_delivers_them_when_closed(
        monkeypatch: pytest.MonkeyPatch, collector: OdpCollector) -> None:
    pytest.importorskip("flask")
    monkeypatch.setenv("OPTIMIZELY_ODP_FLUSH_INTERVAL", "3600")  # only close() sends
    module = load_example("flask_app", monkeypatch, collector)
    try:
        web = module.app.test_client()
        for user in ("ada", "bob", "cy"):
            answer = web.get(f"/buy?user={user}&sku=A-1")
            assert answer.status_code == 200 and answer.get_json()["odp"] == "accepted"
        assert web.get("/buy").status_code == 400
        assert collector.event_count() == 0
        module.close_client()  # what atexit does at interpreter exit
        assert [e["identifiers"]["fs_user_id"] for e in collector.events] == ["ada", "bob", "cy"]
        assert {e["data"]["sku"] for e in collector.events} == {"A-1"}
    finally:
        atexit.unregister(module.close_client)
        module.close_client()


# -- gunicorn.conf.py ---------------------------------------------------------------------------
@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool-per-worker"])
def test_gunicorn_preloaded_workers_deliver_every_event_once_at_exit(
        spool: bool, collector: OdpCollector, tmp_path: Path) -> None:
    pytest.importorskip("flask")
    pytest.importorskip("gunicorn")
    import requests

    extra = {"ODP_EXAMPLE_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "2", "OPTIMIZELY_ODP_FLUSH_INTERVAL": "3600"}
    if spool:
        extra["ODP_EXAMPLE_SPOOL_DIR"] = str(tmp_path / "spools")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py")],
                              cwd=tmp_path, env=example_env(collector, **extra), stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, server.kill)
    watchdog.start()
    try:
        assert server.stderr is not None
        lines: list[str] = []
        url = ""
        while sum(": ready" in line for line in lines) < 2:  # both workers past their boot (post_worker_init)
            line = server.stderr.readline()
            assert line, "gunicorn stopped:\n" + "".join(lines)
            lines.append(line)
            found = re.search(r"Listening at: (http://\S+)", line)
            url = found.group(1) if found else url
        for i in range(12):
            assert requests.get(f"{url}/buy", params={"user": f"u{i}"}, timeout=10).json()["odp"] == "accepted"
        assert collector.event_count() == 0, "workers hold their events until they exit"
        server.send_signal(signal.SIGTERM)
        try:
            rest = server.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("gunicorn did not stop within 30 s of SIGTERM:\n" + "".join(lines) + server.communicate()[1])
    finally:
        watchdog.cancel()
        server.kill()
    assert server.returncode == 0, rest
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == sorted(f"u{i}" for i in range(12))
    assert collector.duplicates() == {}
    assert "memory only" not in "".join(lines) + rest
    if spool:
        assert sorted(p.name for p in (tmp_path / "spools").glob("*.sqlite")) == ["odp-slot-0.sqlite",
                                                                                 "odp-slot-1.sqlite"]
