"""examples/fastapi_app.py under a real uvicorn server on 127.0.0.1: the lifespan builds the
client, async routes send events without blocking, and shutdown's close_async delivers them."""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path
from types import ModuleType

import pytest
import requests
from conftest import API_KEY

from optimizely_odp_ext.testing import OdpCollector

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


def load_example(monkeypatch: pytest.MonkeyPatch, collector: OdpCollector) -> ModuleType:
    monkeypatch.setenv("ODP_EXAMPLE_COLLECTOR_URL", collector.url)
    monkeypatch.setenv("ODP_EXAMPLE_API_KEY", API_KEY)
    monkeypatch.setenv("OPTIMIZELY_ODP_FLUSH_INTERVAL", "3600")  # nothing leaves before a flush or the shutdown
    spec = importlib.util.spec_from_file_location("example_fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Served:
    """uvicorn serving ``app`` on a thread, on a socket already listening on a free port of
    127.0.0.1: requests made before the server is up wait in the backlog, not in a poll loop."""

    def __init__(self, app: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=20)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Shut down as on SIGTERM (the lifespan's shutdown runs), and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not shut down"
        self.sock.close()


def test_lifespan_client_async_routes_and_close_async_at_shutdown(monkeypatch: pytest.MonkeyPatch,
                                                                  collector: OdpCollector) -> None:
    module = load_example(monkeypatch, collector)
    served = Served(module.app)
    try:
        with requests.Session() as http:
            for user in ("ada", "bob", "cy"):
                answer = http.post(f"{served.url}/buy", params={"user": user, "sku": "A-1"}, timeout=10)
                assert answer.status_code == 200, answer.text
                assert answer.json()["odp"] == "accepted"
                assert answer.json()["variation"]
            assert http.post(f"{served.url}/buy", params={"user": ""}, timeout=10).status_code == 400
            stats = http.get(f"{served.url}/odp/stats", timeout=10).json()
            assert stats["accepted"] == 3 and stats["delivered"] == 0
            assert collector.event_count() == 0, "sent in the background, not on the request"
            client = module.app.state.odp
    finally:
        served.stop()
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == ["ada", "bob", "cy"]
    assert {e["data"]["sku"] for e in collector.events} == {"A-1"}
    refused = client.send_odp_event("late", {"fs_user_id": "z"})
    assert not refused and refused.reason.value == "closed", "the shutdown closed the client"


def test_flush_route_awaits_delivery_while_other_requests_are_served(monkeypatch: pytest.MonkeyPatch,
                                                                      collector: OdpCollector) -> None:
    module = load_example(monkeypatch, collector)
    arrived, opened = threading.Event(), threading.Event()

    def hold(event: object) -> None:  # ODP got the batch and takes its time to answer
        arrived.set()
        opened.wait(20)

    collector.on_event = hold
    served = Served(module.app)
    flushed: list[requests.Response] = []
    try:
        with requests.Session() as http:
            assert http.post(f"{served.url}/buy", params={"user": "ada"}, timeout=10).json()["odp"] == "accepted"
            flusher = threading.Thread(target=lambda: flushed.append(
                requests.post(f"{served.url}/odp/flush", params={"timeout": 30}, timeout=40)))
            flusher.start()
            assert arrived.wait(timeout=10), "the flush sent the batch; ODP holds its answer"
            # The flush route is still waiting for ODP, and the server answers other requests meanwhile:
            assert http.post(f"{served.url}/buy", params={"user": "bob"}, timeout=10).json()["odp"] == "accepted"
            assert http.get(f"{served.url}/odp/stats", timeout=10).json()["delivered"] == 0
            assert flusher.is_alive()
            opened.set()
            flusher.join(timeout=30)
        assert flushed and flushed[0].json() == {"delivered": True}
    finally:
        opened.set()
        served.stop()
    assert sorted(e["identifiers"]["fs_user_id"] for e in collector.events) == ["ada", "bob"]
