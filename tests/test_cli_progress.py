"""The progress display of ``import`` and ``spool replay`` on a real terminal (a pseudo-terminal),
with and without the ``[progress]`` extra (tqdm)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from test_cli_support import COMMAND, KEY, clean_environment, wire_event

from optimizely_odp_ext.spool import SpoolRecord, SqliteSpool
from optimizely_odp_ext.testing import OdpCollector
from optimizely_odp_ext.testing.redis_server import RedisServer

WITHOUT_TQDM = [sys.executable, "-c", "import sys; sys.modules['tqdm'] = None; "
                "from optimizely_odp_ext.cli import main; sys.exit(main(sys.argv[1:]))"]


def run_on_a_terminal(command: list[str], timeout: float = 60) -> tuple[int, str, str]:
    """Run ``command`` with stderr on a 100-column pseudo-terminal; its exit code, stdout and
    what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                               env=clean_environment(), text=False)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed its end of the terminal
                    break
                if not data:
                    break
                shown += data
            elif process.poll() is not None:
                break
        assert process.stdout is not None
        out = process.stdout.read().decode()
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, shown.decode(errors="replace")


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"action": "purchase", "identifiers": {"fs_user_id": f"u-{i}"}}) + "\n"
                            for i in range(2000)))
    return path


def test_import_on_a_terminal_shows_a_progress_bar(events_file: Path) -> None:
    pytest.importorskip("tqdm")
    with OdpCollector(api_key=KEY) as collector:
        code, out, shown = run_on_a_terminal([*COMMAND, "import", str(events_file), "--host", collector.url,
                                              "--api-key", KEY, "--batch-size", "100"])

    assert code == 0, shown
    assert "2,000 delivered" in out
    final = shown.replace("\r\n", "\n").split("\r")[-1]
    assert "import: 100%|" in final and "2000/2000" in final, shown
    assert "event/s" in final and "delivered=2,000, failed=0" in final


def test_without_tqdm_a_terminal_gets_plain_lines_and_a_hint(events_file: Path) -> None:
    with OdpCollector(api_key=KEY) as collector:
        code, _, shown = run_on_a_terminal([*WITHOUT_TQDM, "import", str(events_file), "--host", collector.url,
                                            "--api-key", KEY, "--batch-size", "100", "--progress-interval", "0"])

    assert code == 0, shown
    assert "pip install 'optimizely-odp-ext[progress]'" in shown
    assert "optimizely-odp: import: 2,000/2,000 events (100%), 2,000 delivered, 0 failed" in shown
    assert "%|" not in shown


def test_spool_replay_on_a_terminal_shows_the_same_bar(tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    path = tmp_path / "spool.db"
    with OdpCollector(api_key=KEY) as collector:
        with SqliteSpool(path) as spool:
            spool.append([SpoolRecord(collector.url, KEY, wire_event(i), time.time()) for i in range(1500)])
        code, out, shown = run_on_a_terminal([*COMMAND, "spool", "replay", str(path), "--batch-size", "100"])

    assert code == 0, shown
    assert "1,500 delivered" in out
    final = shown.replace("\r\n", "\n").split("\r")[-1]
    assert "replay: 100%|" in final and "1500/1500" in final and "delivered=1,500, failed=0" in final


def test_spool_replay_of_a_redis_stream_on_a_terminal_shows_the_same_bar(redis_server: RedisServer) -> None:
    pytest.importorskip("tqdm")
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    with OdpCollector(api_key=KEY) as collector:
        with RedisStreamSpool(redis_server.url) as spool:
            spool.append([SpoolRecord(collector.url, KEY, wire_event(i), time.time()) for i in range(1500)])
        code, out, shown = run_on_a_terminal([*COMMAND, "spool", "replay", redis_server.url, "--batch-size", "100"])
        delivered = collector.event_count()

    assert code == 0, shown
    assert delivered == 1500
    assert "1,500 delivered" in out
    final = shown.replace("\r\n", "\n").split("\r")[-1]
    assert "replay: 100%|" in final and "1500/1500" in final and "delivered=1,500, failed=0" in final
