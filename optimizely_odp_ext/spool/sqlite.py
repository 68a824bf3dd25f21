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
import fcntl
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from optimizely_odp_ext.spool.base import SpooledEvent, SpoolError, SpoolId, SpoolLockedError

_COLUMNS = ("id", "host", "api_key", "body", "accepted_at")
_SCHEMA = ("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, "
           "api_key TEXT NOT NULL, body BLOB NOT NULL, accepted_at REAL NOT NULL)")
_SELECT = "SELECT id, host, api_key, body, accepted_at FROM events"
_INSERT = "INSERT INTO events(host, api_key, body, accepted_at) VALUES (?, ?, ?, ?)"
_BUSY_TIMEOUT_MS = 5000

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
        raise SpoolError(f"spool {path} is not an ODP event spool ({found}; expected {', '.join(_COLUMNS)})")


def _stats(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    events, size, oldest, newest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(accepted_at), MAX(accepted_at) FROM events"
    ).fetchone()
    file_bytes = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return {"path": path, "events": events, "bytes": size, "oldest_accepted_at": oldest,
            "newest_accepted_at": newest, "file_bytes": file_bytes}


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.fspath(path)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._forked = False
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = self._take_process_lock()
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"spool {self.path} cannot use WAL journaling (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            _check_schema(self._conn, self.path)
            for extra in (self.path + "-wal", self.path + "-shm"):
                if os.path.exists(extra):
                    os.chmod(extra, 0o600)
        except BaseException as error:
            self.close()
            if isinstance(error, (OSError, sqlite3.Error)):
                raise _fail(self.path, error) from error
            raise
        _OPEN_SPOOLS.add(self)

    def _take_process_lock(self) -> int:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise SpoolError(f"spool {self.path} cannot be used: cannot open {lock_path}: {error.strerror}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            own = " (this process)" if holder == str(os.getpid()) else ""
            raise SpoolLockedError(f"spool {self.path} is in use by another process (pid {holder}){own}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

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

    def append(self, host: str, api_key: str, body: bytes, accepted_at: float) -> int:
        """Store one event, committed before returning. Thread-safe; blocks briefly on disk I/O.

        Returns:
            The event's rowid (increasing; never reused, even after :meth:`purge`).
        """
        with self._connection() as conn:
            return _rowid(conn.execute(_INSERT, (host, api_key, body, accepted_at)))

    def append_many(self, rows: Sequence[tuple[str, str, bytes, float]]) -> list[int]:
        """Store ``(host, api_key, body, accepted_at)`` rows in one transaction. Thread-safe; blocks.

        Returns:
            Their rowids, in order.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")
            ids = [_rowid(conn.execute(_INSERT, row)) for row in rows]
            conn.execute("COMMIT")
        return ids

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
            return _stats(conn, self.path)

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
