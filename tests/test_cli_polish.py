"""What a new user of ``optimizely-odp`` saw go wrong (issue 12, item 5), each checked in a subprocess."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from test_cli_support import (
    COMMAND,
    KEY,
    ROOT,
    clean_environment,
    closed_port,
    error_line,
    run,
    wire_event,
)

from optimizely_odp_ext.integration import mask_key
from optimizely_odp_ext.spool import SpoolRecord, SqliteSpool
from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

LONG_DURATION = re.compile(r"\d+\.\d{3,}\s?s\b")


@pytest.fixture
def collector() -> Iterator[OdpCollector]:
    with OdpCollector(api_key=KEY) as server:
        yield server


@pytest.fixture
def datafile(collector: OdpCollector, tmp_path: Path) -> str:
    path = tmp_path / "datafile.json"
    path.write_text(json.dumps(sample_datafile(collector.url, KEY)))
    return str(path)


@pytest.fixture
def dead_host_datafile(tmp_path: Path) -> str:
    path = tmp_path / "dead.json"
    path.write_text(json.dumps(sample_datafile(f"http://127.0.0.1:{closed_port()}", KEY)))
    return str(path)


# ------------------------------------------------------------------ --sdk-key without a network


@pytest.mark.parametrize("command", [["send", "purchase", "--id", "fs_user_id=u"], ["doctor"]])
def test_a_datafile_fetch_that_fails_ends_the_wait_at_once_in_one_readable_line(command: list[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/datafile.json"
    started = time.monotonic()
    done = run(*command, "--sdk-key", "SDK_KEY", "--datafile-url", url, "--timeout", "30")
    elapsed = time.monotonic() - started

    assert done.returncode == 1
    assert elapsed < 15, f"waited {elapsed:.1f}s: the failed fetch did not end the wait"
    expected = f"cannot get the datafile from {url}: connection refused"
    output = done.stdout + done.stderr
    if command[0] == "send":
        assert error_line(done) == f"optimizely-odp: error: {expected}"
    else:
        assert f"  - {expected}\n" in done.stdout and "status: PROBLEM" in done.stdout
    assert "HTTPConnectionPool" not in output and "Max retries" not in output and "urllib3" not in output


@pytest.mark.parametrize("status, said", [(404, "HTTP 404 Not Found"), (500, "HTTP 500")])
def test_a_datafile_server_error_is_named_by_its_status(status: int, said: str) -> None:
    with DatafileServer(sample_datafile()) as datafiles:
        datafiles.set_status(status)
        url = datafiles.url
        started = time.monotonic()
        done = run("send", "purchase", "--id", "fs_user_id=u", "--sdk-key", "K", "--datafile-url", url,
                   "--timeout", "30")

    assert time.monotonic() - started < 15
    assert done.returncode == 1
    line = error_line(done)
    assert line.startswith(f"optimizely-odp: error: cannot get the datafile from {url}: {said}")
    assert len(line) < 160


def _resolver_stays_on_this_machine() -> bool:
    try:
        servers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                   if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return False
    return bool(servers) and all(server.startswith("127.") or server == "::1" for server in servers)


@pytest.mark.skipif(not _resolver_stays_on_this_machine(),
                    reason="the DNS resolver is not on this machine: looking up a name would send traffic out")
def test_an_unresolvable_datafile_host_is_one_line() -> None:
    done = run("send", "purchase", "--id", "fs_user_id=u", "--sdk-key", "K",
               "--datafile-url", "http://datafile.optimizely-odp-ext.invalid/d.json", "--timeout", "30")

    assert done.returncode == 1
    assert "cannot resolve the host name" in error_line(done)


# ------------------------------------------------------------------ one verdict for a dead host


def test_send_to_a_dead_host_gives_one_consistent_verdict(dead_host_datafile: str) -> None:
    done = run("send", "purchase", "--datafile", dead_host_datafile, "--id", "fs_user_id=u", "--timeout", "1.5")

    assert done.returncode == 1
    assert done.stdout.startswith("result: accepted\n")
    server_lines = [line for line in done.stdout.splitlines() if line.startswith("server:")]
    assert server_lines and all("no answer (network error)" in line for line in server_lines), done.stdout
    assert "shutdown" not in done.stdout  # the command giving up is not an answer from the server
    line = error_line(done)
    assert "event not delivered: not acknowledged within 1.5s" in line
    assert "failed (last: network error: ConnectionError); given up as the command ends" in line
    assert "events kept" not in line and "retry #" not in line


# ------------------------------------------------------------------ doctor and a spool it cannot use


def _not_a_spool(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers(id INTEGER, name TEXT)")
        conn.commit()


def tables(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))


SPOOL_PROBLEMS = {
    "directory that cannot be created": lambda tmp: tmp / "a-file" / "sub" / "spool.db",
    "SQLite file that is not a spool": lambda tmp: tmp / "other.db",
}


@pytest.mark.parametrize("problem", sorted(SPOOL_PROBLEMS))
def test_doctor_fails_on_a_spool_it_cannot_use(problem: str, datafile: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "corrupt.db").write_bytes(b"this is not an SQLite database\n" * 100)
    _not_a_spool(tmp_path / "other.db")
    spool = SPOOL_PROBLEMS[problem](tmp_path)
    before = tables(tmp_path / "other.db")

    done = run("doctor", "--datafile", datafile, "--set", f"spool_path={spool}")

    assert done.returncode == 1, done.stdout
    status = done.stdout.splitlines()[-1]
    assert status.startswith("status: PROBLEM, the spool cannot be used: "), done.stdout
    assert spool.name in status
    assert tables(tmp_path / "other.db") == before, "doctor must not turn another application's database into a spool"


@contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """``path`` made a directory nobody may create files in, root included: mode 0555, and for
    root (who ignores modes) the immutable attribute."""
    path.mkdir()
    path.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            path.chmod(0o755)
            pytest.skip(f"running as root and chattr +i is not available here: {done.stderr.strip()}")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


def test_doctor_fails_on_a_spool_in_a_read_only_directory(datafile: str, tmp_path: Path) -> None:
    locked = tmp_path / "read-only"
    with read_only_directory(locked):
        done = run("doctor", "--datafile", datafile, "--set", f"spool_path={locked / 'spool.db'}")

    assert done.returncode == 1, done.stdout
    status = done.stdout.splitlines()[-1]
    assert status.startswith("status: PROBLEM, the spool cannot be used: ") and "spool.db" in status, status
    assert not any(locked.iterdir())


def test_doctor_reports_a_usable_spool_and_its_events(datafile: str, tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with SqliteSpool(path) as spool:
        spool.append([SpoolRecord("http://odp.invalid", KEY, wire_event(i), time.time()) for i in range(3)])

    done = run("doctor", "--datafile", datafile, "--set", f"spool_path={path}")

    assert done.returncode == 0, done.stdout
    assert f"spool: {path}" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("status: OK")


def test_doctor_fails_on_a_damaged_spool_and_says_it_was_set_aside(datafile: str, tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not an SQLite database\n" * 100)

    done = run("doctor", "--datafile", datafile, "--set", f"spool_path={path}")

    assert done.returncode == 1, done.stdout
    status = done.stdout.splitlines()[-1]
    assert status.startswith(f"status: PROBLEM, the spool {path} is "), status
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("spool.db.damaged-") and "-wal" not in p.name]
    assert f"damaged_file {aside}" in status and "since " in status
    assert aside.read_bytes() == b"this is not an SQLite database\n" * 100  # kept, byte for byte


# ------------------------------------------------------------------ | head


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, unbuffered: bool) -> None:
    path = tmp_path / "spool.db"
    with SqliteSpool(path) as spool:
        spool.append([SpoolRecord("http://odp.invalid", KEY, wire_event(i), time.time()) for i in range(3)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte (| head that has had enough)
    try:
        env = clean_environment(**({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
        done = subprocess.run([*COMMAND, "spool", "stats", str(path)], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=30, env=env)
    finally:
        os.close(write_end)

    assert done.stderr == ""
    assert done.returncode == 141  # as a shell reports a tool ended by SIGPIPE


def test_a_pipe_to_head_reads_the_first_lines_and_nothing_breaks(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    SqliteSpool(path).close()
    done = subprocess.run(["sh", "-c", f'{" ".join(COMMAND)} spool stats "{path}" | head -2; exit "$?"'],
                          capture_output=True, text=True, timeout=30, env=clean_environment())

    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    assert "error" not in done.stderr


# ------------------------------------------------------------------ spool paths


def test_spool_commands_say_what_is_wrong_with_the_path_and_leave_no_lock_behind(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 100)
    other = tmp_path / "other.db"
    _not_a_spool(other)

    directory = run("spool", "stats", str(tmp_path))
    outcomes = [run("spool", command, str(path), *extra) for path in (garbage, other)
                for command, extra in (("replay", []), ("purge", ["--yes"]), ("stats", []))]

    assert directory.returncode == 1
    assert error_line(directory) == f"optimizely-odp: error: spool {tmp_path} is a directory, not a spool file"
    for done in outcomes:
        assert done.returncode == 1
        line = error_line(done)
        assert "file is not a database" in line or "is not an ODP event spool" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.db", "other.db"]  # no .lock, nothing renamed
    assert garbage.read_bytes() == b"not a database\n" * 100


def test_replaying_a_spool_in_use_keeps_the_holders_lock(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with SqliteSpool(path):
        done = run("spool", "replay", str(path))
        assert (tmp_path / "spool.db.lock").exists()

    assert "in use by another process" in error_line(done)


# ------------------------------------------------------------------ --set messages


@pytest.mark.parametrize("arguments, env, expected", [
    (["--set", "batch_size=abc"], {}, "--set batch_size=abc: batch_size must be a whole number from 1 to 500"),
    (["--set", "request_timeout=soon"], {}, "--set request_timeout=soon: request_timeout must be a number from "
     "0.01 to 600"),
    ([], {"OPTIMIZELY_ODP_MAX_IN_FLIGHT": "many"}, "environment variable OPTIMIZELY_ODP_MAX_IN_FLIGHT=many: "
     "max_in_flight must be a whole number from 1 to 64"),
])
def test_a_bad_setting_names_the_setting_and_what_it_takes(datafile: str, arguments: list[str],
                                                           env: dict[str, str], expected: str) -> None:
    for command in (["send", "purchase", "--id", "fs_user_id=u"], ["doctor"]):
        done = run(*command, "--datafile", datafile, *arguments, env=env)

        assert done.returncode == 2
        assert error_line(done) == f"optimizely-odp: error: {expected}"
        assert "invalid literal" not in done.stderr


# ------------------------------------------------------------------ one way to mask a key


@pytest.mark.parametrize("key", ["short1", "a-rather-long-public-key"])
def test_every_command_masks_the_key_the_same_way(key: str, tmp_path: Path) -> None:
    with OdpCollector(api_key=key) as collector:
        datafile = tmp_path / "datafile.json"
        datafile.write_text(json.dumps(sample_datafile(collector.url, key)))
        doctor = run("doctor", "--datafile", str(datafile), "--send-test-event")
        send = run("--verbose", "send", "purchase", "--datafile", str(datafile), "--id", "fs_user_id=u")
        spool = tmp_path / "spool.db"
        with SqliteSpool(spool) as opened:
            opened.append([SpoolRecord(collector.url, key, wire_event(1), time.time())])
        collector.respond_with(401)
        replay = run("spool", "replay", str(spool))

    outputs = [doctor.stdout + doctor.stderr, send.stdout + send.stderr, replay.stdout + replay.stderr]
    for output in outputs:
        assert key not in output
    assert f"{mask_key(key)} (masked)" in doctor.stdout
    assert f"key {mask_key(key)}" in send.stderr  # the SDK log (--verbose) names the integration
    assert f"key {mask_key(key)}" in replay.stderr


# ------------------------------------------------------------------ durations


def test_durations_are_rounded_in_every_output(dead_host_datafile: str, datafile: str) -> None:
    send = run("--verbose", "send", "purchase", "--datafile", dead_host_datafile, "--id", "fs_user_id=u",
               "--timeout", "0.3", "--set", "close_timeout=0.2")
    doctor = run("doctor", "--datafile", datafile, "--set", "request_timeout=0.19999351700005263",
                 "--timeout", "0.30000000000000004")

    for done in (send, doctor):
        assert not LONG_DURATION.search(done.stdout + done.stderr), done.stdout + done.stderr
    assert re.search(r"request_timeout\s+0\.2\s", doctor.stdout)
    assert "not acknowledged within 0.3s" in send.stderr


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize("example", ["quickstart.py", "lambda_handler.py", "custom_event_manager.py"])
def test_the_examples_print_no_alarming_sdk_warning(example: str) -> None:
    env = clean_environment(PYTHONPATH=str(ROOT))
    env = {k: v for k, v in env.items() if not k.startswith("ODP_EXAMPLE_")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / example)], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stderr
    assert "Stopping Scheduler" not in done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr



# ------------------------------------------------------------------ doctor against the spool contract (in process)


def test_doctor_reports_a_setting_error_from_building_the_manager(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], datafile: str, tmp_path: Path) -> None:
    from optimizely_odp_ext.cli import main, session
    from optimizely_odp_ext.managers.batch import BatchEventManager
    from optimizely_odp_ext.settings import SettingError

    class RefusesItsSpool(BatchEventManager):
        """What the lead's managers do with a spool they cannot use: refuse at construction."""

        def __init__(self, **settings: object) -> None:
            if settings.get("spool_path"):
                raise SettingError(f"spool_path {settings['spool_path']}: cannot create the directory "
                                   "(Permission denied)")
            super().__init__(**settings)

    monkeypatch.setattr(session, "BatchEventManager", RefusesItsSpool)
    spool = tmp_path / "locked" / "spool.db"

    assert main(["doctor", "--datafile", datafile, "--set", f"spool_path={spool}"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (f"status: PROBLEM, the spool cannot be used: spool_path {spool}: cannot create "
                                    "the directory (Permission denied)")
    assert re.search(r"ODP state:\s+integrated", out)  # the rest of the report is still there


def test_doctor_reports_a_spool_state_other_than_ok(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], datafile: str, tmp_path: Path) -> None:
    from optimizely_odp_ext.cli import main, session
    from optimizely_odp_ext.managers.batch import BatchEventManager

    path = tmp_path / "spool.db"

    class RecoveredSpool(BatchEventManager):
        """What the lead's managers report after renaming a damaged spool aside."""

        def stats(self) -> dict[str, object]:
            return {**super().stats(), "spool": {"kind": "sqlite", "state": "recovered", "description": str(path),
                                                 "renamed_to": f"{path}.damaged-1", "events": 0}}  # 0: not shown

    monkeypatch.setattr(session, "BatchEventManager", RecoveredSpool)

    assert main(["doctor", "--datafile", datafile, "--set", f"spool_path={path}"]) == 1
    out = capsys.readouterr().out
    assert f"spool: {path} (recovered)" in out
    assert out.splitlines()[-1] == f"status: PROBLEM, the spool {path} is recovered (renamed_to {path}.damaged-1)"
