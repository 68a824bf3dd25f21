"""RedisServer, the throwaway redis-server for tests: start, restart, crash, pause, close."""

from __future__ import annotations

import os
import socket
import time

import pytest

from optimizely_odp_ext.testing import RedisServer, RedisServerError
from optimizely_odp_ext.testing.redis_server import find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None and not os.environ.get("CI"),
                                reason="redis-server is not installed (apt-get install -y redis-server)")


def test_it_starts_with_an_aof_keeps_data_across_a_restart_and_cleans_up() -> None:
    with RedisServer() as server:
        assert server.running and server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.execute("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
        assert server.execute("CONFIG", "GET", "appendfsync") == [b"appendfsync", b"everysec"]
        server.execute("SET", "k", b"\x00\xffv")
        port = server.port
        server.restart()
        assert server.port == port and server.execute("GET", "k") == b"\x00\xffv"
        with pytest.raises(RedisServerError, match="wrong number of arguments"):
            server.execute("GET")
        directory = server.directory
    assert not server.running and not os.path.exists(directory)


def test_kill_and_pause_look_like_a_crash_and_a_hung_host() -> None:
    with RedisServer() as server:
        server.pause()
        started = time.monotonic()
        with pytest.raises(OSError):
            server.execute("PING", timeout=0.3)
        assert time.monotonic() - started < 2
        server.resume()
        assert server.execute("PING") == "PONG"
        server.kill()
        assert not server.running
        with pytest.raises(OSError):
            server.execute("PING")
        server.start()
        assert server.execute("PING") == "PONG"


def test_a_password_is_required_and_percent_encoded_in_the_url() -> None:
    with RedisServer(password="p@ss/word") as server:
        assert "p%40ss%2Fword@" in server.url
        assert server.execute("PING") == "PONG"  # execute() authenticates
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert sock.recv(100).startswith(b"-NOAUTH")


def test_a_server_that_exits_at_start_is_a_clear_error_and_leaves_nothing_behind() -> None:
    server = RedisServer(executable="/bin/false")
    with pytest.raises(RedisServerError, match="exited at start"), server:
        pass
    assert not os.path.exists(server.directory)
