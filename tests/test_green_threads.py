"""gevent and eventlet: with monkey-patching, send, flush, close and exit deliver everything
once, and the process exits promptly (posthog-python#865 is what goes wrong otherwise).

Each case runs tests/green_sender.py in a subprocess (monkey-patching is for a whole
process) against the collector in this process on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY

from optimizely_odp_ext.testing import OdpCollector

SCRIPT = Path(__file__).resolve().parent / "green_sender.py"
ROOT = SCRIPT.parent.parent
COUNT = 1000
EXIT_TIMEOUT = 60
"""The exit_timeout setting in these runs: a process that waited it out would not be prompt."""
PROMPT = 30.0
"""Seconds a whole run (interpreter start, imports, 1,000 events, exit) must take at most."""


def installed(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def run(library: str, mode: str, collector: OdpCollector, **settings: str) -> tuple[dict[str, Any], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore",
               OPTIMIZELY_ODP_EXIT_TIMEOUT=str(EXIT_TIMEOUT), **settings)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT), library, mode, collector.url, API_KEY, str(COUNT)],
                          env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT + 30)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def assert_everything_arrived_once(collector: OdpCollector) -> None:
    users = sorted(int(e["identifiers"]["fs_user_id"].split("-")[1]) for e in collector.events)
    assert users == list(range(COUNT))
    assert collector.duplicates() == {}


CASES = [("gevent", mode) for mode in ("background", "flush", "close", "exit")]
CASES += [("eventlet", mode) for mode in ("flush", "exit")]


@pytest.mark.parametrize(("library", "mode"), CASES, ids=[f"{lib}-{mode}" for lib, mode in CASES])
def test_monkey_patched_process_delivers_everything_and_exits_promptly(library: str, mode: str,
                                                                       collector: OdpCollector) -> None:
    if not installed(library):
        pytest.skip(f"{library} is not installed")
    flush_interval = "0.05" if mode == "background" else "3600"  # otherwise only flush/close/exit send
    report, elapsed = run(library, mode, collector, OPTIMIZELY_ODP_FLUSH_INTERVAL=flush_interval)
    assert_everything_arrived_once(collector)
    assert report["stats"]["accepted"] == COUNT
    if mode != "exit":
        assert report["stats"]["delivered"] == COUNT
    if mode == "flush":
        assert report["flushed"] is True
    assert elapsed < PROMPT, f"took {elapsed:.1f}s"


def test_exit_with_odp_down_gives_up_within_exit_timeout_under_gevent(collector: OdpCollector) -> None:
    if not installed("gevent"):
        pytest.skip("gevent is not installed")
    collector.respond_with(503)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", OPTIMIZELY_ODP_EXIT_TIMEOUT="1",
               OPTIMIZELY_ODP_FLUSH_INTERVAL="3600")
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT), "gevent", "exit", collector.url, API_KEY, str(COUNT)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < PROMPT, "a dead ODP must not hold the exit beyond exit_timeout"
    assert collector.request_count() >= 1 and collector.event_count() == 0


def test_client_built_before_the_fork_works_in_a_gevent_patched_child(collector: OdpCollector) -> None:
    """gunicorn --preload -k gevent: the client (its locks and conditions) is built before the
    worker patches, its threads start after. A lock or queue that blocks natively in a green
    thread freezes the whole worker (the manager before the rewrite hung here on a
    queue.SimpleQueue); a hang ends in the child's watchdog (exit 1, stacks on stderr)."""
    if not installed("gevent"):
        pytest.skip("gevent is not installed")
    report, _ = run("gevent", "preload-fork", collector, OPTIMIZELY_ODP_FLUSH_INTERVAL="3600")
    assert_everything_arrived_once(collector)
    assert report["stats"]["delivered"] == COUNT


def test_gunicorn_gevent_workers_preloaded_deliver_every_event_once_at_exit(collector: OdpCollector,
                                                                           tmp_path: Path) -> None:
    """examples/gunicorn_gevent.conf.py: gevent workers, --preload, patched in the master."""
    for library in ("flask", "gunicorn", "gevent"):
        if not installed(library):
            pytest.skip(f"{library} is not installed")
    import requests

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODP_EXAMPLE_", "OPTIMIZELY_ODP_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", ODP_EXAMPLE_COLLECTOR_URL=collector.url,
               ODP_EXAMPLE_API_KEY=API_KEY, ODP_EXAMPLE_BIND="127.0.0.1:0", WEB_CONCURRENCY="2",
               OPTIMIZELY_ODP_FLUSH_INTERVAL="3600")
    config = ROOT / "examples" / "gunicorn_gevent.conf.py"
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(config)],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, server.kill)  # bounds the readline() loop below
    watchdog.start()
    try:
        assert server.stderr is not None
        lines: list[str] = []
        url = ""
        while sum("Booting worker" in line for line in lines) < 2:
            line = server.stderr.readline()
            assert line, "gunicorn stopped:\n" + "".join(lines)
            lines.append(line)
            found = re.search(r"Listening at: (http://\S+)", line)
            url = found.group(1) if found else url
        with requests.Session() as http:
            for i in range(12):
                assert http.get(f"{url}/buy", params={"user": f"u{i}"}, timeout=10).json()["odp"] == "accepted"
        assert collector.event_count() == 0, "workers hold their events until they exit"
        server.send_signal(signal.SIGTERM)
        rest = server.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        server.kill()
        server.wait(timeout=30)
    assert server.returncode == 0, rest
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == sorted(f"u{i}" for i in range(12))
    assert collector.duplicates() == {}
