"""Shared fixtures: a real ODP-compatible collector on 127.0.0.1 and clients pointed at it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile
from optimizely_odp_ext.testing.redis_server import RedisServer, find_redis_server

API_KEY = "test-odp-key"
SDK_LOGGER = "tests.sdk"


@pytest.fixture
def collector() -> Iterator[OdpCollector]:
    with OdpCollector(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def datafile(collector: OdpCollector) -> str:
    """A datafile whose ODP integration points at the collector."""
    return json.dumps(sample_datafile(collector.url, API_KEY))


@pytest.fixture
def sdk_logger(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger=SDK_LOGGER)
    return logging.getLogger(SDK_LOGGER)


ClientFactory = Callable[..., OdpOptimizely]


@pytest.fixture
def make_client(datafile: str, sdk_logger: logging.Logger) -> Iterator[ClientFactory]:
    """Builds OdpOptimizely clients (default: the collector's datafile, a local event
    dispatcher, the captured logger) and closes them after the test."""
    clients: list[OdpOptimizely] = []

    def make(*args: Any, **kwargs: Any) -> OdpOptimizely:
        if not args and not {"datafile", "sdk_key", "config_manager"} & set(kwargs):
            kwargs["datafile"] = datafile
        kwargs.setdefault("event_dispatcher", RecordingEventDispatcher())
        kwargs.setdefault("logger", sdk_logger)
        client = OdpOptimizely(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=5)


def log_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SDK_LOGGER and r.levelno >= level]


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
