"""``SqliteSpool``: the opt-in durable store for accepted ODP events.

Accepted events are appended before ``send_odp_event`` returns and deleted only after
ODP acknowledged them. After a crash (even ``kill -9``) and a restart with the same
path, :meth:`SqliteSpool.load` / :meth:`SqliteSpool.iter_all` return every stored event
with its original bytes, so it is re-sent with its original idempotence_id
(at-least-once delivery).

Durability: WAL journal with ``synchronous=NORMAL``. A committed append survives the
death of the process (the data is in the OS page cache), but not a power loss or a
kernel crash, which may lose the last few transactions (never corrupt the file).
An append costs ~10-20 µs; about one in a few hundred also checkpoints the WAL into
the database (SQLite's default ``wal_autocheckpoint``), which fsyncs and takes milliseconds.

One process per spool: an exclusive ``flock`` on ``<path>.lock`` is held for the
spool's lifetime; a second opener (another process, or the same process again)
gets :class:`SpoolLockedError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from optimizely_odp_ext.spool.base import SpooledEvent, SpoolError, SpoolId, SpoolLockedError, SpoolRecord

_COLUMNS = ("id", "host", "api_key", "body", "accepted_at")
_SCHEMA = ("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, "
           "api_key TEXT NOT NULL, body BLOB NOT NULL, accepted_at REAL NOT NULL)")
_SELECT = "SELECT id, host, api_key, body, accepted_at FROM events"
_INSERT = "INSERT INTO events(host, api_key, body, accepted_at) VALUES (?, ?, ?, ?)"
_BUSY_TIMEOUT_MS = 5000
SQLITE_HEADER = b"SQLite format 3\x00"
APPLICATION_ID = 0x4F445053
"""``PRAGMA application_id`` of a spool ("ODPS"); spools made before it was set have 0."""

_FORKED_CONNECTIONS: list[sqlite3.Connection] = []
"""Connections inherited by a forked child: kept alive forever, never closed there."""
_OPEN_SPOOLS: weakref.WeakSet[SqliteSpool] = weakref.WeakSet()


def _fail(path: str, error: BaseException) -> SpoolError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return SpoolError(f"spool {path} cannot be used: {reason}".replace("\n", " "))


def _rowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None  # always set after an INSERT
    return cursor.lastrowid


def _check_schema(conn: sqlite3.Connection, path: str) -> None:
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(events)"))
    if columns != _COLUMNS:
        found = ", ".join(columns) if columns else "no events table"
        raise SpoolError(f"spool {path} cannot be used: it is not an ODP event spool ({found}; expected "
                         f"{', '.join(_COLUMNS)}); it was left untouched")


def _stats(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    events, size, oldest, newest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(accepted_at), MAX(accepted_at) FROM events"
    ).fetchone()
    file_bytes = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return {"path": path, "events": events, "bytes": size, "oldest_accepted_at": oldest,
            "newest_accepted_at": newest, "file_bytes": file_bytes}


def _prepare_directory(path: str) -> None:
    """Create the spool's directory (mode 0700) if it is missing."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as error:
        raise SpoolError(f"spool {path} cannot be used: cannot create directory {directory}: "
                         f"{error.strerror or error}") from error
    if not os.path.isdir(directory):
        raise SpoolError(f"spool {path} cannot be used: {directory} is not a directory")


def _inspect_existing(path: str) -> str:
    """Why an existing file at ``path`` is damaged ("" when it is fine or missing), reading only.

    Raises:
        SpoolError: it is something else than a spool (a directory, another SQLite database);
            it is left untouched.
    """
    if not os.path.lexists(path):
        return ""
    if not os.path.isfile(path):
        raise SpoolError(f"spool {path} cannot be used: it is not a regular file")
    if os.path.getsize(path) == 0:
        return ""
    with open(path, "rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        return "not an SQLite database (no SQLite header)"
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            ours = tables - {"sqlite_sequence"}
            if application_id not in (0, APPLICATION_ID) or (ours and ours != {"events"}):
                listed = ", ".join(sorted(ours)) or "none"
                raise SpoolError(f"spool {path} cannot be used: it is an SQLite database that is not an ODP "
                                 f"event spool (tables: {listed}; application_id {application_id}); "
                                 "it was left untouched")
            if ours:
                _check_schema(conn, path)
                conn.execute("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM events").fetchone()
    except sqlite3.DatabaseError as error:
        return f"damaged ({error})"
    return ""


class SqliteSpool:
    """A durable, thread-safe FIFO of accepted events in one SQLite file.

    Every method is thread-safe (one internal lock) and blocks for the disk I/O it does,
    typically microseconds; none waits on the network. Errors are :class:`SpoolError`.

    Not usable across ``os.fork()``: the child must open its own spool (see
    :meth:`after_fork_in_child`, which runs automatically in every forked child).

    Args:
        path: the database file; created with mode 0600 if missing. ``<path>.lock``,
            ``<path>-wal`` and ``<path>-shm`` sit beside it.

    Raises:
        SpoolLockedError: the spool is open elsewhere (the message names the holder's pid).
        SpoolError: the file is not a spool, is corrupt, or cannot be created or written.
    """

    kind = "sqlite"
    shared = False
    """Only the process that holds the spool delivers its events."""
    write_through = True
    """Each event is committed before ``send_odp_event`` returns."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.fspath(path)
        self.description = self.path
        self.opening_notes: dict[str, Any] = {}
        """What opening found worth telling (a damaged file renamed aside), for stats and logs."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._forked = False
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._claimed = 0
        self._horizon = 0
        """Rows up to this id were left by a previous run (:meth:`claim` hands them out)."""
        _prepare_directory(self.path)
        self._lock_fd, created_lock = self._take_process_lock()
        try:
            damage = _inspect_existing(self.path)
            if damage:
                self._set_aside(damage)
            self._conn = self._connect()
            self._horizon = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        except BaseException as error:
            self.close()
            if created_lock:
                with contextlib.suppress(OSError):
                    os.unlink(self.path + ".lock")
            if isinstance(error, (OSError, sqlite3.Error)):
                raise _fail(self.path, error) from error
            raise
        _OPEN_SPOOLS.add(self)

    def _connect(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"spool {self.path} cannot use WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            if fresh:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            _check_schema(conn, self.path)
            for extra in (self.path + "-wal", self.path + "-shm"):
                if os.path.exists(extra):
                    os.chmod(extra, 0o600)
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside(self, damage: str) -> None:
        """Rename a damaged file (and its journal files) aside, byte for byte, for a fresh spool."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{self.path}.damaged-{stamp}"
        number = 1
        while os.path.lexists(target):
            number += 1
            target = f"{self.path}.damaged-{stamp}-{number}"
        os.rename(self.path, target)
        for suffix in ("-wal", "-shm", "-journal"):
            if os.path.lexists(self.path + suffix):
                os.rename(self.path + suffix, target + suffix)
        self.opening_notes = {"damaged_file": target, "damage": damage}

    def _take_process_lock(self) -> tuple[int, bool]:
        """The lock file, flocked; and whether this call created it. Never follows a symlink."""
        lock_path = self.path + ".lock"
        created = not os.path.lexists(lock_path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            why = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
            raise SpoolError(f"spool {self.path} cannot be used: cannot open {lock_path}: {why}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            own = " (this process)" if holder == str(os.getpid()) else ""
            raise SpoolLockedError(f"spool {self.path} is in use by another process (pid {holder}){own}") from None
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd, created

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._forked or os.getpid() != self._pid:
                raise SpoolError(f"spool {self.path} was opened by the parent process (pid {self._pid}); "
                                 "the child process must open its own")
            if self._conn is None:
                raise SpoolError(f"spool {self.path} is closed")
            try:
                yield self._conn
            except BaseException as error:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise _fail(self.path, error) from error
                raise

    def append(self, records: Sequence[SpoolRecord]) -> list[SpoolId]:
        """Store events in one transaction, committed before returning. Thread-safe; blocks
        briefly on disk I/O.

        Returns:
            Their rowids, in order (increasing; never reused, even after :meth:`purge`).
        """
        with self._connection() as conn:
            if len(records) == 1:
                return [_rowid(conn.execute(_INSERT, records[0]))]
            conn.execute("BEGIN")
            ids: list[SpoolId] = [_rowid(conn.execute(_INSERT, row)) for row in records]
            conn.execute("COMMIT")
        return ids

    def claim(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` of the events a previous run left, oldest first, each handed out once.
        Thread-safe; blocks for the read."""
        with self._connection() as conn:
            rows = conn.execute(f"{_SELECT} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                                (self._claimed, self._horizon, limit)).fetchall()
        if rows:
            self._claimed = rows[-1][0]
        return [SpooledEvent(*row) for row in rows]

    def ack(self, ids: Sequence[SpoolId]) -> None:
        """Remove delivered (or given up) events. Thread-safe; blocks briefly."""
        self.delete(ids)

    def delete(self, rowids: Iterable[SpoolId]) -> None:
        """Remove acknowledged events in one transaction; missing ids are ignored. Thread-safe; blocks."""
        params = [(rowid,) for rowid in rowids]
        with self._connection() as conn:
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM events WHERE id = ?", params)
            conn.execute("COMMIT")

    def load(self, limit: int | None = None) -> list[SpooledEvent]:
        """Up to ``limit`` stored events (all if None), oldest first. Thread-safe; blocks."""
        with self._connection() as conn:
            rows = conn.execute(f"{_SELECT} ORDER BY id LIMIT ?", (-1 if limit is None else limit,)).fetchall()
        return [SpooledEvent(*row) for row in rows]

    def iter_all(self, chunk: int = 1000) -> Iterator[SpooledEvent]:
        """Every stored event, oldest first, read ``chunk`` rows at a time.

        Thread-safe; the lock is held only while a chunk is read, so appends and deletes
        may interleave (rows appended meanwhile are yielded too).
        """
        last = 0
        while True:
            with self._connection() as conn:
                rows = conn.execute(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
            if not rows:
                return
            for row in rows:
                yield SpooledEvent(*row)
            last = rows[-1][0]

    def count(self) -> int:
        """How many events are stored. Thread-safe; blocks (scans the table)."""
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Summary of the spool. Thread-safe; blocks (scans the table).

        Returns:
            ``path``, ``events``, ``bytes`` (sum of bodies), ``oldest_accepted_at`` and
            ``newest_accepted_at`` (None when empty), ``file_bytes`` (database plus WAL).
        """
        with self._connection() as conn:
            return {"kind": self.kind, "state": "ok", "description": self.description, **_stats(conn, self.path)}

    def purge(self) -> int:
        """Delete every stored event. Thread-safe; blocks.

        Returns:
            How many were deleted.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")
            deleted = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            conn.execute("DELETE FROM events")
            conn.execute("COMMIT")
        return deleted

    def close(self) -> None:
        """Close the database and release the process lock. Idempotent, thread-safe; blocks briefly."""
        self.after_fork_in_child()  # no-op unless this is a forked child
        with self._lock:
            if self._conn is not None and not self._forked:
                self._conn.close()
            self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
        _OPEN_SPOOLS.discard(self)

    def after_fork_in_child(self) -> None:
        """Make this spool unusable in a forked child without disturbing the parent's.

        Runs automatically in every child of ``os.fork()`` (via ``os.register_at_fork``);
        calling it again is harmless. The inherited SQLite connection is never closed in the
        child (closing it there could checkpoint or unlock the parent's database), so it is
        leaked on purpose; the inherited lock descriptor is closed, which leaves the parent's
        flock in place. Later calls raise :class:`SpoolError`; the child must open its own
        spool (on another path, or after the parent closed this one). Does not block.
        """
        if self._forked or os.getpid() == self._pid:
            return
        self._forked = True
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        if self._conn is not None:
            _FORKED_CONNECTIONS.append(self._conn)
            with contextlib.suppress(Exception):  # never freed, even at interpreter exit
                import ctypes
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._conn))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SqliteSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
        """:meth:`stats` of a spool file, read-only and without taking the process lock.

        Safe beside a live process using the spool (for ``spool stats``). Like any SQLite
        reader of a WAL database it may leave ``-wal``/``-shm`` files beside a closed spool
        (same mode as the database). Blocks (scans the table); thread-safe.

        Raises:
            SpoolError: the file is missing, unreadable, or not a spool.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SpoolError(f"spool {path} does not exist")
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                _check_schema(conn, path)
                return _stats(conn, path)
        except sqlite3.Error as error:
            raise _fail(path, error) from error


def _after_fork_in_child() -> None:
    for spool in list(_OPEN_SPOOLS):
        spool.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
