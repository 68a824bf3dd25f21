"""Tests of OdpCollector against the real server on 127.0.0.1, with `requests` as the client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from optimizely_odp_ext.testing import OdpCollector, RecordedRequest
from optimizely_odp_ext.testing import collector as collector_module

KEY = "test-odp-key"
HEADERS = {"x-api-key": KEY, "content-type": "application/json"}


def make_event(action: str = "purchase", **data: Any) -> dict[str, Any]:
    return {
        "type": "fullstack",
        "action": action,
        "identifiers": {"fs_user_id": "user-1"},
        "data": {"idempotence_id": str(uuid.uuid4()), **data},
    }


@pytest.fixture
def collector() -> Iterator[OdpCollector]:
    with OdpCollector() as server:
        yield server


def post(
    collector: OdpCollector,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    sender = session or requests
    return sender.post(f"{collector.url}/v3/events", data=data, headers=headers or HEADERS, timeout=5)


# ------------------------------------------------------------------ success path


def test_accepts_a_list_and_records_it_in_order(collector: OdpCollector) -> None:
    events = [make_event("a"), make_event("b", price=9.5, ok=True, note=None, n=3)]
    response = post(collector, events)

    assert response.status_code == 202
    body = response.json()
    assert body["title"] == "Accepted" and body["status"] == 202 and body["timestamp"].endswith("Z")
    assert collector.events == events
    assert collector.event_count() == 2
    [recorded] = collector.requests
    assert isinstance(recorded, RecordedRequest)
    assert (recorded.method, recorded.path, recorded.status) == ("POST", "/v3/events", 202)
    assert recorded.headers["x-api-key"] == KEY
    assert recorded.events == events
    assert json.loads(recorded.body) == events


def test_accepts_a_single_object(collector: OdpCollector) -> None:
    event = make_event()
    assert post(collector, event).status_code == 202
    assert collector.events == [event]


def test_content_type_with_charset_is_accepted(collector: OdpCollector) -> None:
    headers = {**HEADERS, "content-type": "application/json; charset=utf-8"}
    assert post(collector, [make_event()], headers=headers).status_code == 202


def test_chunked_body_is_accepted(collector: OdpCollector) -> None:
    raw = json.dumps([make_event(), make_event()]).encode()
    chunks = iter([raw[:10], raw[10:50], raw[50:]])
    response = requests.post(f"{collector.url}/v3/events", data=chunks, headers=HEADERS, timeout=5)
    assert response.status_code == 202
    assert collector.requests[0].headers["transfer-encoding"] == "chunked"
    assert collector.event_count() == 2


def test_clear_forgets_everything_recorded(collector: OdpCollector) -> None:
    post(collector, [make_event()])
    collector.clear()
    assert (collector.events, collector.requests, collector.event_count()) == ([], [], 0)


def test_record_false_keeps_only_counters() -> None:
    with OdpCollector(record=False) as collector:
        assert post(collector, [make_event(), make_event()]).status_code == 202
        assert collector.event_count() == 2 and collector.request_count() == 1
        assert collector.events == [] and collector.requests == []


# ------------------------------------------------------------------ keys, paths, methods, headers


def test_wrong_key_is_401(collector: OdpCollector) -> None:
    response = post(collector, [make_event()], headers={**HEADERS, "x-api-key": "nope"})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized" and response.json()["status"] == 401
    assert collector.event_count() == 0
    assert collector.requests[0].status == 401


def test_missing_key_is_401_even_when_any_key_is_accepted() -> None:
    with OdpCollector(api_key=None) as collector:
        assert collector.api_key is None
        assert (
            post(collector, [make_event()], headers={**HEADERS, "x-api-key": "anything"}).status_code == 202
        )
        response = post(collector, [make_event()], headers={"content-type": "application/json"})
        assert response.status_code == 401
        assert response.json()["title"] == "Unauthorized"
        assert post(collector, [make_event()], headers={**HEADERS, "x-api-key": ""}).status_code == 401
        assert collector.event_count() == 1


def test_set_api_keys_rotates_keys(collector: OdpCollector) -> None:
    collector.set_api_keys("new-key", "newer-key")
    assert collector.api_key == "new-key"
    assert post(collector, [make_event()]).status_code == 401
    for key in ("new-key", "newer-key"):
        assert post(collector, [make_event()], headers={**HEADERS, "x-api-key": key}).status_code == 202


def test_several_keys_in_constructor() -> None:
    with OdpCollector(api_key=["k1", "k2"]) as collector:
        assert collector.api_key == "k1"
        assert post(collector, [make_event()], headers={**HEADERS, "x-api-key": "k2"}).status_code == 202


def test_wrong_content_type_is_415(collector: OdpCollector) -> None:
    response = post(collector, [make_event()], headers={**HEADERS, "content-type": "text/plain"})
    assert response.status_code == 415
    assert collector.event_count() == 0


def test_other_path_is_404_and_other_method_is_405(collector: OdpCollector) -> None:
    assert requests.post(f"{collector.url}/v2/events", json=[], headers=HEADERS, timeout=5).status_code == 404
    response = requests.get(f"{collector.url}/v3/events", headers=HEADERS, timeout=5)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert requests.put(f"{collector.url}/v3/events", json=[], headers=HEADERS, timeout=5).status_code == 405


def test_post_without_length_is_411(collector: OdpCollector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        conn.putrequest("POST", "/v3/events")
        conn.putheader("x-api-key", KEY)
        conn.putheader("content-type", "application/json")
        conn.endheaders()
        assert conn.getresponse().status == 411
    finally:
        conn.close()


# ------------------------------------------------------------------ body validation


def test_nan_is_rejected_as_invalid_json(collector: OdpCollector) -> None:
    body = '[{"type":"fullstack","action":"a","identifiers":{"x":"y"},"data":{"v":NaN}}]'
    response = post(collector, body)
    assert response.status_code == 400
    assert response.json()["title"] == "Bad Request" and "NaN" in response.json()["detail"]
    assert collector.event_count() == 0


@pytest.mark.parametrize("body", ["not json", "", "[1, 2", '"a string"', "Infinity"])
def test_invalid_json_is_400(collector: OdpCollector, body: str) -> None:
    assert post(collector, body).status_code == 400
    assert collector.event_count() == 0


def test_more_than_500_events_is_400_and_500_is_fine(collector: OdpCollector) -> None:
    assert post(collector, [make_event() for _ in range(501)]).status_code == 400
    assert collector.event_count() == 0
    assert post(collector, [make_event() for _ in range(500)]).status_code == 202
    assert collector.event_count() == 500


def _without(key: str) -> dict[str, Any]:
    event = make_event()
    del event[key]
    return event


BAD_EVENTS: list[Any] = [
    "a string",
    [make_event()],
    _without("type"),
    {**make_event(), "type": ""},
    {**make_event(), "type": 5},
    _without("action"),
    {**make_event(), "action": ""},
    {**make_event(), "action": None},
    _without("identifiers"),
    {**make_event(), "identifiers": {}},
    {**make_event(), "identifiers": {"fs_user_id": {"nested": "x"}}},
    {**make_event(), "identifiers": ["fs_user_id"]},
    {**make_event(), "data": ["x"]},
    {**make_event(), "data": None},
    {**make_event(), "data": {"nested": {"a": 1}}},
    {**make_event(), "data": {"list": [1]}},
]


@pytest.mark.parametrize("bad", BAD_EVENTS)
def test_shape_violation_is_400_and_nothing_is_recorded(collector: OdpCollector, bad: Any) -> None:
    response = post(collector, [make_event(), bad, make_event()])
    assert response.status_code == 400
    assert response.json()["detail"].startswith("events[1]")
    assert collector.event_count() == 0 and collector.events == []
    assert collector.requests[0].status == 400


def test_scalar_identifier_values_are_accepted_as_the_official_client_sends_them(collector: OdpCollector) -> None:
    event = {**make_event(), "identifiers": {"fs_user_id": 123, "email": "a@example.com", "vip": True, "x": None}}
    assert post(collector, [event]).status_code == 202
    assert collector.events[0]["identifiers"] == event["identifiers"]


def test_empty_list_is_400(collector: OdpCollector) -> None:
    assert post(collector, []).status_code == 400


# ------------------------------------------------------------------ fault injection


def test_respond_with_times_and_retry_after(collector: OdpCollector) -> None:
    collector.respond_with(503, times=2, retry_after="7")
    for _ in range(2):
        response = post(collector, [make_event()])
        assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert collector.event_count() == 0
    assert post(collector, [make_event()]).status_code == 202
    assert [r.status for r in collector.requests] == [503, 503, 202]
    assert collector.event_count() == 1


def test_respond_with_until_reset_and_custom_body(collector: OdpCollector) -> None:
    collector.respond_with(500, body='{"oops":true}')
    for _ in range(3):
        response = post(collector, [make_event()])
        assert response.status_code == 500 and response.json() == {"oops": True}
    collector.reset_faults()
    assert post(collector, [make_event()]).status_code == 202


def test_set_delay_delays_the_answer(collector: OdpCollector) -> None:
    collector.set_delay(0.2)
    started = time.monotonic()
    assert post(collector, [make_event()]).status_code == 202
    assert time.monotonic() - started >= 0.2


def test_drop_connections_gives_connection_error(collector: OdpCollector) -> None:
    collector.drop_connections(times=1)
    with pytest.raises(requests.ConnectionError):
        post(collector, [make_event()])
    assert post(collector, [make_event()]).status_code == 202
    dropped, accepted = collector.requests
    assert dropped.status == 0 and dropped.body != b"" and accepted.status == 202
    assert collector.event_count() == 1


def test_drop_connections_before_reading_body(collector: OdpCollector) -> None:
    collector.drop_connections(times=1, after_reading_body=False)
    with pytest.raises(requests.ConnectionError):
        post(collector, [make_event() for _ in range(200)])
    assert collector.wait_for_requests(1)
    assert collector.requests[0].status == 0 and collector.requests[0].body == b""
    assert post(collector, [make_event()]).status_code == 202


def test_reject_events_refuses_the_whole_batch(collector: OdpCollector) -> None:
    collector.reject_events(lambda event: event["action"] == "poison", status=422)
    response = post(collector, [make_event(), make_event("poison"), make_event()])
    assert response.status_code == 422
    assert collector.event_count() == 0
    assert post(collector, [make_event()]).status_code == 202
    collector.reject_events(None)
    assert post(collector, [make_event("poison")]).status_code == 202
    assert collector.event_count() == 2


def test_duplicates_counts_idempotence_ids_accepted_more_than_once(collector: OdpCollector) -> None:
    repeated = make_event()
    post(collector, [repeated, make_event()])
    post(collector, [repeated])
    post(collector, [repeated, {**make_event(), "data": {"no_id": 1}}])
    assert collector.duplicates() == {repeated["data"]["idempotence_id"]: 3}


# ------------------------------------------------------------------ connections, callbacks, waiting


def test_keep_alive_reuses_one_connection(collector: OdpCollector) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert post(collector, [make_event()], session=session).status_code == 202
        assert post(collector, "bad json", session=session).status_code == 400  # error answers too
        assert post(collector, [make_event()], session=session).status_code == 202
    assert collector.connections_opened() == 1


def test_on_event_is_called_for_each_accepted_event(collector: OdpCollector) -> None:
    seen: list[dict[str, Any]] = []
    collector.on_event = seen.append
    events = [make_event("a"), make_event("b")]
    post(collector, events)
    post(collector, [make_event("bad"), {"type": "x"}])  # refused: no callback
    assert seen == events


def test_wait_for_events_wakes_when_events_arrive(collector: OdpCollector) -> None:
    sender = threading.Thread(target=post, args=(collector, [make_event() for _ in range(3)]))
    sender.start()
    assert collector.wait_for_events(3, timeout=5)
    sender.join()


def test_wait_for_events_times_out(collector: OdpCollector) -> None:
    post(collector, [make_event()])
    assert collector.wait_for_events(1, timeout=0.01)
    assert not collector.wait_for_events(2, timeout=0.05)
    assert not collector.wait_for_requests(2, timeout=0.05)


def test_many_concurrent_clients(collector: OdpCollector) -> None:
    def send() -> None:
        with requests.Session() as session:
            for _ in range(5):
                post(collector, [make_event() for _ in range(20)], session=session)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    assert collector.wait_for_events(16 * 5 * 20)
    for thread in threads:
        thread.join()
    assert collector.duplicates() == {}


# ------------------------------------------------------------------ host and lifecycle


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "192.168.1.2", "example.com", "::", ""])
def test_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError):
        OdpCollector(host=host)


def test_localhost_binds_ipv4_loopback() -> None:
    with OdpCollector(host="localhost") as collector:
        assert collector.url == f"http://127.0.0.1:{collector.port}"
        assert post(collector, [make_event()]).status_code == 202


def test_ipv6_loopback() -> None:
    collector = OdpCollector(host="::1")
    try:
        collector.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert collector.url == f"http://[::1]:{collector.port}"
        assert post(collector, [make_event()]).status_code == 202
    finally:
        collector.stop()


def test_stop_is_idempotent_and_releases_the_port() -> None:
    collector = OdpCollector().start()
    session = requests.Session()
    assert post(collector, [make_event()], session=session).status_code == 202  # leaves a kept-alive socket
    collector.stop()
    collector.stop()
    with pytest.raises(requests.ConnectionError):
        post(collector, [make_event()], session=session)
    session.close()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", collector.port))  # would raise if the listener were still open
        sock.listen()


def test_restart_serves_on_the_same_port() -> None:
    collector = OdpCollector().start()
    port = collector.port
    collector.stop()
    with collector:
        assert collector.port == port
        assert post(collector, [make_event()]).status_code == 202
    with OdpCollector() as running, pytest.raises(RuntimeError):
        running.start()


def test_stop_gives_an_accepted_request_its_answer_and_accepts_nothing_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server told to stop while it writes the 202 of accepted events (the CLI's --max-events)
    still answers: the client never sees a dropped connection for events that were recorded."""
    monkeypatch.setattr(collector_module, "STOP_GRACE", 60.0)
    collector = OdpCollector(api_key=None).start()
    stopper = threading.Thread(target=collector.stop)
    waited: list[bool] = []

    def stop_while_accepting(event: dict[str, Any]) -> None:
        stopper.start()
        assert collector._stopped.wait(5), "stop() began before the answer is written"
        stopper.join(0.3)
        waited.append(stopper.is_alive())  # stop() waits for this answer instead of cutting it off

    collector.on_event = stop_while_accepting
    response = requests.post(collector.url + "/v3/events", json=[make_event()], headers={"x-api-key": "k"}, timeout=10)
    stopper.join(10)
    assert response.status_code == 202 and collector.event_count() == 1
    assert waited == [True] and not stopper.is_alive()


def test_a_delayed_request_is_not_accepted_once_stop_began() -> None:
    collector = OdpCollector(api_key=None).start()
    collector.set_delay(30)
    outcome: list[object] = []

    def post() -> None:
        try:
            outcome.append(requests.post(collector.url + "/v3/events", json=[make_event()], headers={"x-api-key": "k"},
                                         timeout=10).status_code)
        except requests.ConnectionError as error:
            outcome.append(type(error).__name__)

    client = threading.Thread(target=post)
    client.start()
    assert collector.wait_for_requests(0) and _wait_until(lambda: len(collector._open_sockets) == 1)
    collector.stop()
    client.join(10)
    assert outcome == ["ConnectionError"] and collector.event_count() == 0


def _wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
