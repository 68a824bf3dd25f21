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

from optimizely_odp_ext.spool import SpooledEvent, SpoolError, SpoolLockedError, SpoolRecord, SqliteSpool

REPO = str(Path(__file__).resolve().parent.parent)
HOST, KEY = "https://api.zaius.com", "W4WzcEs-ABgXorzY7h1LCQ"


def body(i: int) -> bytes:
    """Distinct bodies, including bytes that are not valid UTF-8 and a NUL."""
    return b'{"idempotence_id":"%d"}' % i + bytes([i % 256, 0, 0xFF])


def put(spool: SqliteSpool, body: bytes, accepted_at: float = 1.0, host: str = HOST, key: str = KEY) -> int:
    """Append one event; its rowid."""
    (rowid,) = spool.append([SpoolRecord(host, key, body, accepted_at)])
    assert isinstance(rowid, int)
    return rowid


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
s.append([("h", "k", b"x" * 10, 1.0)] * 3)
print("ready", flush=True)
time.sleep(60)
""")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_round_trip_keeps_bytes_and_order(spool: SqliteSpool) -> None:
    ids = [put(spool, body(i), 1000.0 + i) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    loaded = spool.load()
    assert loaded == [SpooledEvent(rowid, HOST, KEY, body(i), 1000.0 + i) for i, rowid in enumerate(ids)]
    assert all(type(e.body) is bytes for e in loaded)
    assert spool.load(limit=2) == loaded[:2]
    spool.delete([ids[1], ids[3], 999_999])  # missing ids are ignored
    assert [e.id for e in spool.load()] == [ids[0], ids[2], ids[4]]
    assert [e.id for e in spool.iter_all(chunk=2)] == [ids[0], ids[2], ids[4]]


def test_append_many_count_stats_purge(spool: SqliteSpool, path: str) -> None:
    assert spool.stats() == {"kind": "sqlite", "state": "ok", "description": path, "path": path, "events": 0,
                             "bytes": 0, "oldest_accepted_at": None, "newest_accepted_at": None,
                             "file_bytes": spool.stats()["file_bytes"]}
    assert spool.append([]) == []
    ids = spool.append([SpoolRecord(HOST, KEY, body(i), 50.0 - i) for i in range(10)])
    assert len(ids) == 10 and ids == sorted(ids)
    assert [e.body for e in spool.load()] == [body(i) for i in range(10)]
    assert spool.count() == 10
    stats = spool.stats()
    assert stats["events"] == 10 and stats["bytes"] == sum(len(body(i)) for i in range(10))
    assert (stats["oldest_accepted_at"], stats["newest_accepted_at"]) == (41.0, 50.0)
    assert stats["file_bytes"] > 0 and stats["path"] == path
    assert spool.purge() == 10
    assert spool.count() == 0 and spool.purge() == 0
    assert put(spool, b"{}") > ids[-1]  # type: ignore[operator]  # ids are never reused


def test_bad_row_rolls_back_and_spool_stays_usable(spool: SqliteSpool) -> None:
    with pytest.raises(SpoolError):
        spool.append([(HOST, KEY, b"{}", 1.0), (HOST, KEY, b"{}")])  # type: ignore[list-item]
    assert spool.count() == 0
    put(spool, b"{}")
    assert spool.count() == 1


def test_files_are_private(tmp_path: Path, path: str) -> None:
    old = os.umask(0o022)
    try:
        with SqliteSpool(path) as s:
            put(s, b"{}")
            for name in (path, path + ".lock", path + "-wal", path + "-shm"):
                assert mode(name) == 0o600, name
    finally:
        os.umask(old)


def test_second_open_in_same_process_is_locked(spool: SqliteSpool, path: str) -> None:
    with pytest.raises(SpoolLockedError, match=f"spool {path} is in use by another process \\(pid {os.getpid()}\\)"):
        SqliteSpool(path)
    put(spool, b"{}")  # the first one is unaffected


def test_close_is_idempotent_and_releases_the_lock(path: str) -> None:
    first = SqliteSpool(path)
    put(first, b"{}")
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


def test_a_damaged_file_is_renamed_aside_byte_for_byte_and_a_fresh_spool_opened(path: str) -> None:
    garbage = b"\x00garbage\xff" * 500
    Path(path).write_bytes(garbage)
    with SqliteSpool(path) as spool:
        notes = spool.opening_notes
        assert notes["damage"] == "not an SQLite database (no SQLite header)"
        assert Path(notes["damaged_file"]).read_bytes() == garbage
        assert Path(notes["damaged_file"]).name.startswith("spool.db.damaged-")
        assert spool.count() == 0
        put(spool, b"{}")
    with SqliteSpool(path) as again:  # the fresh one is a spool now
        assert again.count() == 1 and again.opening_notes == {}


def test_a_spool_with_a_damaged_page_is_renamed_aside(path: str) -> None:
    with SqliteSpool(path) as spool:
        spool.append([SpoolRecord(HOST, KEY, b"x" * 3000, 1.0)] * 50)
    data = bytearray(Path(path).read_bytes())
    data[100:4096 * 3] = b"\xee" * (4096 * 3 - 100)  # the header survives, the pages do not
    Path(path).write_bytes(bytes(data))
    with SqliteSpool(path) as spool:
        assert spool.opening_notes["damage"].startswith("damaged (")
        assert Path(spool.opening_notes["damaged_file"]).read_bytes() == bytes(data)
        assert spool.count() == 0


def test_another_sqlite_database_is_refused_and_left_byte_for_byte(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users(name) VALUES ('ada')")
    conn.close()
    before = Path(path).read_bytes()
    with pytest.raises(SpoolError, match="is an SQLite database that is not an ODP event spool \\(tables: users"):
        SqliteSpool(path)
    assert Path(path).read_bytes() == before
    assert sorted(os.listdir(os.path.dirname(path))) == ["spool.db"]  # no lock, journal or WAL left behind


def test_an_events_table_of_another_shape_is_refused_and_left_alone(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, payload TEXT)")
    conn.close()
    before = Path(path).read_bytes()
    with pytest.raises(SpoolError, match="not an ODP event spool \\(id, payload;"):
        SqliteSpool(path)
    assert Path(path).read_bytes() == before
    assert not os.path.exists(path + ".lock")


def test_a_missing_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "spool.db"
    with SqliteSpool(path) as spool:
        put(spool, b"{}")
    assert mode(path.parent) == 0o700


def test_a_path_that_cannot_be_created_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "spool.db"
    with pytest.raises(SpoolError, match=f"spool {path} cannot be used: cannot create directory {blocker}"):
        SqliteSpool(path)


def test_a_symlink_planted_at_the_lock_file_is_not_followed(tmp_path: Path, path: str) -> None:
    target = tmp_path / "precious"
    target.write_text("do not overwrite")
    os.symlink(target, path + ".lock")
    with pytest.raises(SpoolError, match=r"cannot open .*spool\.db\.lock: it is a symbolic link"):
        SqliteSpool(path)
    assert target.read_text() == "do not overwrite"


def test_claim_hands_out_what_a_previous_run_left_once(path: str) -> None:
    with SqliteSpool(path) as first:
        left = [put(first, body(i), float(i)) for i in range(7)]
    with SqliteSpool(path) as second:
        new = put(second, b"{}")  # this run's own events are not handed out
        claimed = second.claim(5) + second.claim(5) + second.claim(5)
        assert [event.id for event in claimed] == left
        assert [event.body for event in claimed] == [body(i) for i in range(7)]
        second.ack(left[:3])
        assert [event.id for event in second.load()] == [*left[3:], new]

def test_kill_9_loses_nothing_that_append_returned(path: str) -> None:
    proc = spawn(f"""
from optimizely_odp_ext.spool import SqliteSpool
s = SqliteSpool({path!r})
for i in range(200):
    s.append([("h", "k", b'{{"idempotence_id":"%d"}}' % i + bytes([i % 256, 0, 0xFF]), float(i))])
print("ready", flush=True)
i = 200
while True:  # keep appending; each printed id was returned by append
    print(s.append([("h", "k", b'{{"idempotence_id":"%d"}}' % i + bytes([i % 256, 0, 0xFF]), float(i))])[0],
          flush=True)
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
        ids[n] = [put(spool, b"%d-%d" % (n, i), float(i)) for i in range(500)]

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
    put(spool, b"{}", 1.0)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            try:
                put(spool, b"{}", 2.0)
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
    put(spool, b"{}", 3.0)  # the parent's connection and lock are intact
    assert [e.accepted_at for e in spool.load()] == [1.0, 3.0]
    with pytest.raises(SpoolLockedError):
        SqliteSpool(path)
