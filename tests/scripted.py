"""Subprocesses for the fleet tests: ``python -c`` scripts and ``optimizely-odp`` commands whose
output is read line by line, every wait bounded, every process stopped at the end of the test."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

from optimizely_odp_ext.testing import OdpCollector

ROOT = Path(__file__).resolve().parent.parent
COMMAND = (sys.executable, "-m", "optimizely_odp_ext.cli")

PRELUDE = """
import json, os, sys, threading, time
from optimizely_odp_ext import BatchEventManager, OdpOptimizely
from optimizely_odp_ext.testing import RecordingEventDispatcher
DATAFILE, REDIS_URL = sys.argv[1], sys.argv[2]
ARGS = sys.argv[3:]

def client(**settings):
    settings.setdefault("spool_url", REDIS_URL)
    settings.setdefault("retry_initial_backoff", 0.05)
    settings.setdefault("retry_max_backoff", 0.2)
    return OdpOptimizely(datafile=DATAFILE, event_dispatcher=RecordingEventDispatcher(),
                         odp_event_manager=BatchEventManager(**settings))

def say(*words):
    print(*words, flush=True)

def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        time.sleep(0.01)

def told(word):
    "An event set once the test writes ``word`` on stdin."
    event = threading.Event()
    def listen():
        for line in sys.stdin:
            if line.strip() == word:
                event.set()
                return
    threading.Thread(target=listen, daemon=True).start()
    return event
"""


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without OPTIMIZELY_ODP_* variables, the checkout first on the path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPTIMIZELY_ODP_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Process:
    """One subprocess: stdout lines queued by a reader thread (so a wait is bounded), stderr kept."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(list(argv), env=env or environment(), text=True, bufsize=1,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True)]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr).append(line.rstrip("\n"))
            if is_stdout:
                self.lines.put(line.rstrip("\n"))
        if is_stdout:
            self.lines.put(None)

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the next stdout line that starts with ``prefix`` (earlier lines are skipped);
        fails the test after ``timeout`` seconds or when the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} within {timeout}s from {self}")
            if line is None:
                self.lines.put(None)
                pytest.fail(f"{self} ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def expect_json(self, prefix: str, timeout: float = 30.0) -> Any:
        return json.loads(self.expect(prefix, timeout))

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to end (bounded) and its output to be read; its exit code. Fails
        the test with the process's last output when it does not end in time."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self} still runs after {timeout}s; its last output:\n"
                        + "\n".join(self.stdout[-20:] + self.stderr[-40:]))
        for reader in self._readers:
            reader.join(timeout)
        return code

    def finish(self, timeout: float = 30.0) -> None:
        """Wait for the process to end; fail the test unless it exited 0."""
        code = self.wait(timeout)
        assert code == 0, f"{self} exited {code}: " + "\n".join(self.stderr[-30:])

    def stop(self) -> None:
        """Kill it if it still runs (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __str__(self) -> str:
        return f"process {self.pid} (stderr: {' | '.join(self.stderr[-5:])})"


class Processes:
    """Starts scripts and commands for one test; kills what is left at its end."""

    def __init__(self, datafile: str, redis_url: str) -> None:
        self.datafile = datafile
        self.redis_url = redis_url
        self.started: list[Process] = []

    def script(self, body: str, *args: str) -> Process:
        """``python -c PRELUDE + body DATAFILE REDIS_URL *args``."""
        code = PRELUDE + textwrap.dedent(body)
        return self._start([sys.executable, "-c", code, self.datafile, self.redis_url, *args])

    def command(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """``optimizely-odp *args``."""
        return self._start([*COMMAND, *args], env)

    def _start(self, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(argv, env)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


def users(collector: OdpCollector) -> Counter[str]:
    """How many times each ``fs_user_id`` arrived."""
    return Counter(e["identifiers"]["fs_user_id"] for e in collector.events)


def expected_users(tag: str, count: int, start: int = 0) -> Counter[str]:
    return Counter(f"{tag}-{i}" for i in range(start, count))


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02,
               message: str = "") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def ledger_balances(stats: dict[str, Any]) -> bool:
    """One member's counters add up: accepted + claimed (+ recovered) = delivered + dropped +
    queued + in flight + spooled + released."""
    came = stats["accepted"] + stats.get("claimed", 0) + stats.get("recovered", 0)
    went = (stats["delivered"] + stats["dropped_total"] + stats["queued"] + stats["in_flight"]
            + stats.get("spooled", 0) + stats.get("released", 0))
    return bool(came == went)


def stream_length(redis_server: Any, stream: str = "optimizely-odp:events") -> int:
    return int(redis_server.execute("XLEN", stream))


def pending_count(redis_server: Any, stream: str = "optimizely-odp:events", group: str = "optimizely-odp") -> int:
    try:
        summary = redis_server.execute("XPENDING", stream, group)
    except Exception:  # no group yet
        return 0
    return int(summary[0])


def pending_by_pid(redis_server: Any, stream: str = "optimizely-odp:events",
                   group: str = "optimizely-odp") -> dict[int, int]:
    """Entries each member holds, by the pid in its generated name (``host-pid-random``)."""
    try:
        summary = redis_server.execute("XPENDING", stream, group)
    except Exception:
        return {}
    held: dict[int, int] = {}
    for name, count in summary[3] or []:
        pid = int(name.decode().rsplit("-", 2)[1])
        held[pid] = held.get(pid, 0) + int(count)
    return held
