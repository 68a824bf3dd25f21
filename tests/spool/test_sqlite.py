"""SqliteSpool: real files, real processes, no mocks."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizely_odp_ext.spool import SpooledEvent, SpoolError, SpoolLockedError, SqliteSpool

REPO = str(Path(__file__).resolve().parent.parent)
HOST, KEY = "https://api.zaius.com", "W4WzcEs-ABgXorzY7h1LCQ"


def body(i: int) -> bytes:
    """Distinct bodies, including bytes that are not valid UTF-8 and a NUL."""
    return b'{"idempotence_id":"%d"}' % i + bytes([i % 256, 0, 0xFF])


def spawn(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "spool.db")


@pytest.fixture
def spool(path: str) -> Iterator[SqliteSpool]:
    with SqliteSpool(path) as s:
        yield s


@pytest.fixture
def holder(path: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the spool open with three events in it."""
    proc = spawn(f"""
import time
from optimizely_odp_ext.spool import SqliteSpool
s = SqliteSpool({path!r})
s.append_many([("h", "k", b"x" * 10, 1.0)] * 3)
print("ready", flush=True)
time.sleep(60)
""")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_round_trip_keeps_bytes_and_order(spool: SqliteSpool) -> None:
    ids = [spool.append(HOST, KEY, body(i), 1000.0 + i) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    loaded = spool.load()
    assert loaded == [SpooledEvent(rowid, HOST, KEY, body(i), 1000.0 + i) for i, rowid in enumerate(ids)]
    assert all(type(e.body) is bytes for e in loaded)
    assert spool.load(limit=2) == loaded[:2]
    spool.delete([ids[1], ids[3], 999_999])  # missing ids are ignored
    assert [e.id for e in spool.load()] == [ids[0], ids[2], ids[4]]
    assert [e.id for e in spool.iter_all(chunk=2)] == [ids[0], ids[2], ids[4]]


def test_append_many_count_stats_purge(spool: SqliteSpool, path: str) -> None:
    assert spool.stats() == {"path": path, "events": 0, "bytes": 0, "oldest_accepted_at": None,
                             "newest_accepted_at": None, "file_bytes": spool.stats()["file_bytes"]}
    assert spool.append_many([]) == []
    ids = spool.append_many([(HOST, KEY, body(i), 50.0 - i) for i in range(10)])
    assert len(ids) == 10 and ids == sorted(ids)
    assert [e.body for e in spool.load()] == [body(i) for i in range(10)]
    assert spool.count() == 10
    stats = spool.stats()
    assert stats["events"] == 10 and stats["bytes"] == sum(len(body(i)) for i in range(10))
    assert (stats["oldest_accepted_at"], stats["newest_accepted_at"]) == (41.0, 50.0)
    assert stats["file_bytes"] > 0 and stats["path"] == path
    assert spool.purge() == 10
    assert spool.count() == 0 and spool.purge() == 0
    assert spool.append(HOST, KEY, b"{}", 1.0) > ids[-1]  # ids are never reused


def test_bad_row_rolls_back_and_spool_stays_usable(spool: SqliteSpool) -> None:
    with pytest.raises(SpoolError):
        spool.append_many([(HOST, KEY, b"{}", 1.0), (HOST, KEY, b"{}")])  # type: ignore[list-item]
    assert spool.count() == 0
    spool.append(HOST, KEY, b"{}", 1.0)
    assert spool.count() == 1


def test_files_are_private(tmp_path: Path, path: str) -> None:
    old = os.umask(0o022)
    try:
        with SqliteSpool(path) as s:
            s.append(HOST, KEY, b"{}", 1.0)
            for name in (path, path + ".lock", path + "-wal", path + "-shm"):
                assert mode(name) == 0o600, name
    finally:
        os.umask(old)


def test_second_open_in_same_process_is_locked(spool: SqliteSpool, path: str) -> None:
    with pytest.raises(SpoolLockedError, match=f"spool {path} is in use by another process \\(pid {os.getpid()}\\)"):
        SqliteSpool(path)
    spool.append(HOST, KEY, b"{}", 1.0)  # the first one is unaffected


def test_close_is_idempotent_and_releases_the_lock(path: str) -> None:
    first = SqliteSpool(path)
    first.append(HOST, KEY, b"{}", 1.0)
    first.close()
    first.close()
    with pytest.raises(SpoolError, match="closed"):
        first.count()
    with SqliteSpool(path) as again:
        assert again.count() == 1


def test_other_process_holds_lock_and_inspect_reads_beside_it(path: str,
                                                              holder: subprocess.Popen[str]) -> None:
    with pytest.raises(SpoolLockedError) as caught:
        SqliteSpool(path)
    assert str(caught.value) == f"spool {path} is in use by another process (pid {holder.pid})"
    stats = SqliteSpool.inspect(path)
    assert stats["events"] == 3 and stats["bytes"] == 30 and stats["path"] == path
    holder.kill()
    holder.wait()
    with SqliteSpool(path) as s:  # the kernel released the dead holder's flock
        assert s.count() == 3


def test_inspect_errors(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="does not exist"):
        SqliteSpool.inspect(tmp_path / "missing.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not sqlite " * 100)
    with pytest.raises(SpoolError, match=f"spool {garbage} cannot be used: file is not a database"):
        SqliteSpool.inspect(garbage)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(SpoolError, match="not an ODP event spool"):
        SqliteSpool.inspect(other)


def assert_lock_free(path: str) -> None:
    fd = os.open(path + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_garbage_file_is_a_clear_spool_error(path: str) -> None:
    Path(path).write_bytes(b"\x00garbage\xff" * 500)
    with pytest.raises(SpoolError) as caught:
        SqliteSpool(path)
    message = str(caught.value)
    assert message == f"spool {path} cannot be used: file is not a database"
    assert not isinstance(caught.value, sqlite3.Error) and "\n" not in message
    assert_lock_free(path)


def test_incompatible_table_is_a_spool_error(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, payload TEXT)")
    conn.close()
    with pytest.raises(SpoolError, match=f"spool {path} is not an ODP event spool \\(id, payload;"):
        SqliteSpool(path)
    assert_lock_free(path)


def test_missing_directory_is_a_spool_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "spool.db"
    with pytest.raises(SpoolError, match=f"spool {path} cannot be used: .*No such file or directory"):
        SqliteSpool(path)


def test_read_only_directory_is_a_spool_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        with pytest.raises(SpoolError, match="Permission denied"):
            SqliteSpool(directory / "spool.db")
    finally:
        directory.chmod(0o700)


def test_kill_9_loses_nothing_that_append_returned(path: str) -> None:
    proc = spawn(f"""
from optimizely_odp_ext.spool import SqliteSpool
s = SqliteSpool({path!r})
for i in range(200):
    s.append("h", "k", b'{{"idempotence_id":"%d"}}' % i + bytes([i % 256, 0, 0xFF]), float(i))
print("ready", flush=True)
i = 200
while True:  # keep appending; each printed id was returned by append
    print(s.append("h", "k", b'{{"idempotence_id":"%d"}}' % i + bytes([i % 256, 0, 0xFF]), float(i)), flush=True)
    i += 1
""")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    acknowledged = [int(proc.stdout.readline()) for _ in range(50)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged += [int(line) for line in proc.stdout.read().splitlines() if line.strip().isdigit()]
    proc.stdout.close()
    with SqliteSpool(path) as s:
        events = s.load()
    assert [e.body for e in events[:200]] == [body(i) for i in range(200)]
    assert [e.body for e in events] == [body(i) for i in range(len(events))]
    assert set(acknowledged) <= {e.id for e in events}


def test_concurrent_appends(spool: SqliteSpool) -> None:
    ids: list[list[int]] = [[] for _ in range(8)]

    def worker(n: int) -> None:
        ids[n] = [spool.append(HOST, KEY, b"%d-%d" % (n, i), float(i)) for i in range(500)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in ids for i in chunk]
    assert len(every) == len(set(every)) == spool.count() == 4000
    assert all(chunk == sorted(chunk) for chunk in ids)
    assert {e.body for e in spool.iter_all(chunk=333)} == {b"%d-%d" % (n, i) for n in range(8) for i in range(500)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_cannot_use_the_parents_spool(spool: SqliteSpool, path: str) -> None:
    spool.append(HOST, KEY, b"{}", 1.0)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            try:
                spool.append(HOST, KEY, b"{}", 2.0)
            except SpoolError as error:
                expected = (f"spool {path} was opened by the parent process (pid {os.getppid()}); "
                            "the child process must open its own")
                if str(error) == expected:
                    code = 0
            spool.after_fork_in_child()  # already ran at fork; harmless again
            try:
                SqliteSpool(path)  # the parent still holds the flock
                code = 3
            except SpoolLockedError:
                pass
            spool.close()
            gc.collect()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    spool.append(HOST, KEY, b"{}", 3.0)  # the parent's connection and lock are intact
    assert [e.accepted_at for e in spool.load()] == [1.0, 3.0]
    with pytest.raises(SpoolLockedError):
        SqliteSpool(path)
