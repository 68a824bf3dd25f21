"""Helpers shared by the ``optimizely-odp`` tests (tests/test_cli*.py); no tests here.

Every command runs as a real subprocess (``python -m optimizely_odp_ext.cli``) with a
bounded timeout, against collectors and datafile servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from optimizely_odp_ext.integration import mask_key

KEY = "test-odp-key"
MASKED_KEY = mask_key(KEY)
COMMAND = [sys.executable, "-m", "optimizely_odp_ext.cli"]
ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without OPTIMIZELY_ODP_* variables, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPTIMIZELY_ODP_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = RUN_TIMEOUT, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; never a traceback on stderr."""
    done = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_environment(**(env or {})), input=input, cwd=cwd,
                          stdin=None if input is not None else subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def popen(*args: str, env: dict[str, str] | None = None, **options: Any) -> subprocess.Popen[str]:
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*COMMAND, *args], text=True, env=clean_environment(**(env or {})),
                            stdin=subprocess.DEVNULL, **options)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed run: exactly one ``optimizely-odp: error:`` line."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("optimizely-odp: error: "), done.stderr
    return lines[0]


def read_line(stream: IO[str], timeout: float = 10.0) -> str:
    """One line from a subprocess pipe, failing the test instead of hanging."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(timeout), "the subprocess printed nothing"
    return stream.readline()


def wire_event(index: int, action: str = "replayed") -> bytes:
    return json.dumps({"type": "fullstack", "action": action, "identifiers": {"fs_user_id": f"user-{index}"},
                       "data": {"idempotence_id": f"id-{index}"}}, separators=(",", ":")).encode()


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
