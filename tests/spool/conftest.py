"""Fixtures for the Redis spool: a real ``redis-server`` (AOF on) per test, and spools on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from optimizely_odp_ext.testing.redis_server import RedisServer, find_redis_server


def _require_redis() -> None:
    """Skip without redis-server or redis-py on this machine; in CI (``CI`` set), fail instead:
    ``.ci/run`` installs both, so a skip there would hide a broken install."""
    missing = []
    if find_redis_server() is None:
        missing.append("redis-server is not installed (apt-get install -y redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py is not installed (pip install -e '.[redis]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free 127.0.0.1 port, AOF on (``everysec``), stopped after."""
    _require_redis()
    with RedisServer() as server:
        yield server


SpoolFactory = Callable[..., Any]


@pytest.fixture
def make_redis_spool(redis_server: RedisServer) -> Iterator[SpoolFactory]:
    """Builds ``RedisStreamSpool``s on ``redis_server`` (or ``url=``) and closes them after."""
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    spools: list[RedisStreamSpool] = []

    def make(**kwargs: Any) -> RedisStreamSpool:
        kwargs.setdefault("url", redis_server.url)
        kwargs.setdefault("socket_timeout", 2.0)
        kwargs.setdefault("connect_timeout", 2.0)
        spool = RedisStreamSpool(**kwargs)
        spools.append(spool)
        return spool

    yield make
    for spool in spools:
        spool.close()
