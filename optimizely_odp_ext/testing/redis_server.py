"""A throwaway ``redis-server`` on 127.0.0.1, for tests and examples of the Redis spool.

:class:`RedisServer` starts the locally installed ``redis-server`` (Debian package
``redis-server``; else ``valkey-server``, which takes the same configuration) on a free loopback port, in its own
temporary directory, with an append-only file (``appendonly yes``, ``appendfsync everysec``
by default), and stops it afterwards. It can be stopped and started again on the same port
and data (a Redis restart), killed (a crash), or paused (a hung server). Example::

    with RedisServer() as server:
        spool = RedisStreamSpool(server.url)
        ...
        server.restart()      # SHUTDOWN (writes the AOF) and start again, same port and data

Standard library only; it speaks just enough RESP to ``PING``, ``SHUTDOWN`` and run the odd
setup command (:meth:`RedisServer.execute`). Methods block for at most their timeouts; they
are not meant to be called from several threads at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

__all__ = ["RedisServer", "RedisServerError"]

_EXECUTABLES = ("redis-server", "valkey-server")
_POLL_SECONDS = 0.02
_PORT_ATTEMPTS = 5

class RedisServerError(RuntimeError):
    """The server could not be started or stopped, or answered a command with an error."""


def find_redis_server() -> str | None:
    """The path of ``redis-server`` (or ``valkey-server``) on ``PATH``, or None."""
    for name in _EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


class RedisServer:
    """One local ``redis-server`` process with its own directory and port.

    Args:
        password: Set ``requirepass`` (the ``default`` user's password); None for none.
        port: The port to listen on; 0 picks a free one (kept across :meth:`restart`).
        appendonly: Keep an append-only file in the server's directory.
        appendfsync: ``everysec`` (Redis's default), ``always`` or ``no``.
        config: More ``redis.conf`` lines, e.g. ``["maxmemory 10mb"]``.
        executable: The server binary; default: ``redis-server`` or ``valkey-server`` on ``PATH``.
        start_timeout: Seconds :meth:`start` waits for the server to answer ``PING``.

    Raises:
        RedisServerError: No server binary was found.
    """

    def __init__(
        self,
        password: str | None = None,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        config: Iterable[str] = (),
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        found = executable or find_redis_server()
        if not found:
            raise RedisServerError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.executable = found
        self.password = password
        self.host = "127.0.0.1"
        self.port = port
        self.start_timeout = start_timeout
        self._config_lines = [
            f"appendonly {'yes' if appendonly else 'no'}",
            f"appendfsync {appendfsync}",
            'save ""',
            *config,
        ]
        self.directory = tempfile.mkdtemp(prefix="odp-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0`` (the password percent-encoded)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "redis.log")

    def start(self) -> RedisServer:
        """Start the server (same port and data as before, after a stop) and wait until it
        answers ``PING``. Blocks up to ``start_timeout``; no-op if it runs.

        Raises:
            RedisServerError: It exited or did not answer in time (the message ends with its log).
        """
        if self.running:
            return self
        attempts = _PORT_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            port = self.port or _free_port()
            try:
                self._launch(port)
            except RedisServerError:
                if attempt + 1 == attempts:
                    raise
                continue  # another process took the free port first
            self.port = port
            return self
        raise AssertionError("unreachable")

    def _launch(self, port: int) -> None:
        conf = os.path.join(self.directory, "redis.conf")
        lines = [
            f"port {port}", f"bind {self.host}", "protected-mode yes", "daemonize no",
            f"dir {self.directory}", f"logfile {self.log_path}", f"pidfile {self.directory}/redis.pid",
            *self._config_lines,
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("\n".join(line for line in lines if line) + "\n")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)
        self._process = subprocess.Popen([self.executable, conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RedisServerError(f"redis-server exited at start on port {port}: {self._log_tail()}")
            if self._answers_ping(port):
                return
            time.sleep(_POLL_SECONDS)
        self._terminate()
        raise RedisServerError(f"redis-server did not answer PING within {self.start_timeout}s: {self._log_tail()}")

    def _answers_ping(self, port: int) -> bool:
        try:
            return self._execute_on(port, ("PING",), timeout=1.0) in (b"PONG", "PONG")
        except (OSError, RedisServerError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server as an operator would (``SHUTDOWN``: the AOF is written and fsynced),
        keeping its directory for :meth:`start`. Blocks up to ``timeout``, then kills it. No-op
        if it is not running."""
        if not self.running:
            self._process = None
            return
        self.resume()
        with contextlib.suppress(OSError, RedisServerError):
            self.execute("SHUTDOWN")  # the connection closes without a reply
        self._wait_or_kill(timeout)

    def kill(self) -> None:
        """Crash the server (``SIGKILL``): nothing is saved beyond what it already wrote to
        its AOF. Blocks until the process is gone."""
        if self._process is not None:
            self.resume()
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): it accepts connections but answers nothing, like a
        hung or unreachable host. Undo with :meth:`resume`."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop` then :meth:`start`: same port, same data. Blocks."""
        self.stop(timeout)
        self.start()

    def close(self) -> None:
        """Stop the server (killing it if it does not stop in 10 s) and delete its directory.
        Idempotent."""
        if self._process is not None:
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def execute(self, *args: str | bytes | int | float, timeout: float = 5.0) -> Any:
        """Run one command on a new connection (authenticated with ``password``) and return
        its reply: bytes, int, list, None, or ``str`` for a status reply such as ``OK``.

        Raises:
            RedisServerError: The server answered with an error.
            OSError: It could not be reached (or did not answer within ``timeout``).
        """
        return self._execute_on(self.port, args, timeout=timeout)

    def _execute_on(self, port: int, args: Sequence[str | bytes | int | float], timeout: float) -> Any:
        with socket.create_connection((self.host, port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            if self.password:
                sock.sendall(_encode(("AUTH", self.password)))
                _read_reply(reader)
            sock.sendall(_encode(args))
            return _read_reply(reader)

    def _wait_or_kill(self, timeout: float) -> None:
        assert self._process is not None
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _terminate(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._wait_or_kill(5.0)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as file:
                return " | ".join(line.strip() for line in file.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _encode(args: Sequence[str | bytes | int | float]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisServerError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)[:-2]
        return data
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise RedisServerError(f"unexpected reply {line[:40]!r}")
