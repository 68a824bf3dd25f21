"""An ODP-compatible ``POST /v3/events`` server on loopback, for tests, examples and benchmarks.

:class:`OdpCollector` answers like the ODP events API (202 on success, 400/401/404/405/411/415 on
the errors ODP reports), records what it receives, lets callers wait for events without polling,
and can inject faults (error statuses, latency, dropped connections, poison events).

Example::

    with OdpCollector() as collector:
        datafile["integrations"] = [{"key": "odp", "host": collector.url, "publicKey": collector.api_key}]
        ...
        assert collector.wait_for_events(3)

Standard library only. Every public method is thread-safe.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["EVENTS_PATH", "MAX_EVENTS_PER_REQUEST", "OdpCollector", "RecordedRequest"]

EVENTS_PATH = "/v3/events"
MAX_EVENTS_PER_REQUEST = 500  # ODP's documented limit of objects per request

STOP_GRACE = 2.0
"""Seconds :meth:`OdpCollector.stop` waits for the answers of requests whose events it accepted."""
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the collector received, accepted or not.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request target without the query string.
        headers: The request headers, keys in lower case.
        body: The raw body (empty when the connection was dropped before reading it).
        status: The status answered, or 0 when the connection was dropped without an answer.
        events: The event objects parsed from the body (empty when it was not a JSON event list).
        received_at: ``time.monotonic()`` when the request arrived.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    events: list[dict[str, Any]]
    received_at: float


@dataclass
class _CannedResponse:
    status: int
    remaining: int | None
    retry_after: str | None
    body: str | None
    location: str | None = None


@dataclass
class _Drop:
    remaining: int | None
    after_reading_body: bool


class OdpCollector:
    """A local ODP events endpoint (``POST /v3/events``) that records what it accepts.

    Args:
        api_key: The accepted ``x-api-key`` value, or several; ``None`` accepts any key (the header
            is still required).
        host: A loopback address to bind (``127.x.x.x``, ``localhost`` or ``::1``).
        port: The port to bind; 0 picks a free one.
        record: Keep the accepted events and every request in memory. With ``False`` only the
            counters are kept (``events``, ``requests`` and ``duplicates()`` stay empty), for
            long benchmarks.

    Raises:
        ValueError: If ``host`` is not a loopback address.

    Attributes:
        on_event: Optional callable invoked with each accepted event, on the server thread that
            received it, before the event is recorded and before the client gets its 202.
            Exceptions it raises are logged and ignored.
    """

    def __init__(
        self,
        api_key: str | Iterable[str] | None = "test-odp-key",
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        self._bind_host = _loopback_address(host)
        self._port = port
        self._record = record
        self._api_keys: tuple[str, ...] = ()
        self.set_api_keys(*([api_key] if isinstance(api_key, str) else api_key or ()))
        self.on_event: Callable[[dict[str, Any]], None] | None = None

        self._cond = threading.Condition()  # guards everything below
        self._events: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._event_count = 0
        self._request_count = 0
        self._idempotence_ids: Counter[str] = Counter()
        self._connections_opened = 0
        self._open_sockets: set[socket.socket] = set()
        self._answering = 0
        """Requests whose events were accepted and whose 202 is not written yet."""
        self._canned: _CannedResponse | None = None
        self._drop: _Drop | None = None
        self._delay = 0.0
        self._reject: Callable[[dict[str, Any]], bool] | None = None
        self._reject_status = 400
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> OdpCollector:
        """Bind the port and serve in a daemon thread.

        Does not block beyond binding. Thread-safe. After :meth:`stop`, calling it again serves on
        the same port as before (so a test can simulate an outage and a recovery).

        Returns:
            This collector.

        Raises:
            RuntimeError: If it is already running.
            OSError: If the port cannot be bound.
        """
        with self._cond:
            if self._server is not None:
                raise RuntimeError("OdpCollector is already running")
            server_class = _Server6 if ":" in self._bind_host else _Server
            server = server_class((self._bind_host, self._port), self)
            self._port = server.socket.getsockname()[1]
            self._stopped.clear()
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.01},  # bounds how long stop() waits
                name=f"OdpCollector:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection.

        A request whose events were accepted gets its 202 first (waiting at most
        :data:`STOP_GRACE` seconds); other requests in flight get no answer and nothing of
        theirs is accepted; a request waiting out :meth:`set_delay` wakes at once. Blocks until
        the accept loop has ended (well under a second). Thread-safe and idempotent.
        """
        with self._cond:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        self._stopped.set()
        server.shutdown()
        server.server_close()
        with self._cond:
            self._cond.wait_for(lambda: self._answering == 0, timeout=STOP_GRACE)
            sockets = list(self._open_sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread.join()

    def __enter__(self) -> OdpCollector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`). Non-blocking, thread-safe."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8123``: the ODP ``host`` to put in a datafile.

        Non-blocking, thread-safe.
        """
        host = f"[{self._bind_host}]" if ":" in self._bind_host else self._bind_host
        return f"http://{host}:{self._port}"

    # ----------------------------------------------------------------- keys

    @property
    def api_key(self) -> str | None:
        """The first accepted API key, or ``None`` when any key is accepted. Non-blocking, thread-safe."""
        keys = self._api_keys
        return keys[0] if keys else None

    def set_api_keys(self, *keys: str) -> None:
        """Change the accepted ``x-api-key`` values (no keys: accept any); applies to the next request.

        Non-blocking, thread-safe.
        """
        self._api_keys = tuple(keys)  # replaced atomically; readers take a reference

    # ----------------------------------------------------------------- what was received

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the list of accepted events, in arrival order (the dicts themselves are shared).

        Non-blocking, thread-safe.
        """
        with self._cond:
            return list(self._events)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the list of every request received, accepted or not. Non-blocking, thread-safe."""
        with self._cond:
            return list(self._requests)

    def event_count(self) -> int:
        """The number of accepted events (counted even with ``record=False``). Non-blocking, thread-safe."""
        with self._cond:
            return self._event_count

    def request_count(self) -> int:
        """The number of requests received (counted even with ``record=False``). Non-blocking, thread-safe."""
        with self._cond:
            return self._request_count

    def connections_opened(self) -> int:
        """The number of TCP connections accepted since construction. Non-blocking, thread-safe."""
        with self._cond:
            return self._connections_opened

    def duplicates(self) -> dict[str, int]:
        """Map each ``data.idempotence_id`` accepted more than once to the number of times it was accepted.

        Non-blocking, thread-safe. Empty with ``record=False``.
        """
        with self._cond:
            return {key: n for key, n in self._idempotence_ids.items() if n > 1}

    def clear(self) -> None:
        """Forget the recorded events and requests and reset their counters and the duplicate stats.

        Faults, keys and :meth:`connections_opened` are unchanged. Non-blocking, thread-safe.
        """
        with self._cond:
            self._events.clear()
            self._requests.clear()
            self._event_count = self._request_count = 0
            self._idempotence_ids.clear()

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` events have been accepted, or ``timeout`` seconds pass.

        Waits on a condition variable (no polling). Thread-safe.

        Returns:
            True if the count was reached, False on timeout.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._event_count >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests have been received (answered or dropped).

        Waits on a condition variable (no polling). Thread-safe.

        Returns:
            True if the count was reached, False on timeout.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._request_count >= count, timeout)

    # ----------------------------------------------------------------- fault injection

    def respond_with(
        self,
        status: int,
        *,
        times: int | None = None,
        retry_after: str | None = None,
        body: str | None = None,
        location: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (``None``: until :meth:`reset_faults`) with ``status``.

        Their events are not accepted. Replaces an earlier ``respond_with``. Non-blocking, thread-safe.

        Args:
            status: The status code to answer, 200 to 599.
            times: How many requests to answer so; ``None`` for all of them.
            retry_after: A ``Retry-After`` header value to send, if any.
            body: The response body; by default a small ODP-style JSON problem object.
            location: A ``Location`` header to send, if any: with a 3xx status, a redirect.
        """
        if not 200 <= status <= 599:
            raise ValueError(f"status must be between 200 and 599, not {status}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        with self._cond:
            self._canned = _CannedResponse(status, times, retry_after, body, location)

    def set_delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request (concurrent requests wait in parallel).

        Non-blocking, thread-safe; 0 removes the delay.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._cond:
            self._delay = seconds

    def drop_connections(self, times: int | None = 1, *, after_reading_body: bool = True) -> None:
        """Close the connection without any answer for the next ``times`` requests (``None``: all).

        With ``after_reading_body=False`` the socket is closed before the body is read (the client
        may then see a reset). Replaces an earlier ``drop_connections``. Non-blocking, thread-safe.
        """
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        with self._cond:
            self._drop = _Drop(times, after_reading_body)

    def reject_events(self, predicate: Callable[[dict[str, Any]], bool] | None, status: int = 400) -> None:
        """Refuse, with ``status``, each valid request holding any event for which ``predicate`` is true.

        None of such a request's events are accepted (like ODP refusing a batch with a poison event).
        ``None`` removes the predicate. The predicate runs on server threads. Non-blocking, thread-safe.
        """
        with self._cond:
            self._reject, self._reject_status = predicate, status

    def reset_faults(self) -> None:
        """Remove every injected fault: canned responses, delay, drops and the reject predicate.

        Non-blocking, thread-safe.
        """
        with self._cond:
            self._canned = self._drop = self._reject = None
            self._delay = 0.0

    # ----------------------------------------------------------------- server side

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections_opened += 1
            if self._stopped.is_set():
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            else:
                self._open_sockets.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._cond:
            self._open_sockets.discard(sock)

    def _take_drop(self) -> _Drop | None:
        with self._cond:
            drop = self._drop
            if drop is None or drop.remaining == 0:
                return None
            if drop.remaining is not None:
                drop.remaining -= 1
            return drop

    def _take_canned(self) -> _CannedResponse | None:
        with self._cond:
            canned = self._canned
            if canned is None or canned.remaining == 0:
                return None
            if canned.remaining is not None:
                canned.remaining -= 1
            return canned

    def _handle(self, handler: _Handler) -> None:
        """Serve one request: read it, apply faults, validate, record, answer."""
        received_at = time.monotonic()
        path = handler.path.split("?", 1)[0]
        drop = self._take_drop()
        if drop is not None and not drop.after_reading_body:
            self._record_request(handler, path, b"", 0, [], received_at)
            handler.close_connection = True
            return
        try:
            body, has_length = _read_body(handler)
        except (ValueError, OSError):
            self._record_request(handler, path, b"", 400, [], received_at)
            _answer(handler, 400, _problem(400, "malformed Content-Length or chunked body"), close=True)
            return
        parsed, parse_error = _parse_events(body) if body else (None, "the body is empty")
        if drop is not None:
            self._record_request(handler, path, body, 0, _dicts(parsed), received_at)
            handler.close_connection = True
            return
        with self._cond:
            delay = self._delay
        if delay > 0:
            self._stopped.wait(delay)
        if self._stopped.is_set():  # stopping: nothing more is accepted, the client gets no answer
            self._record_request(handler, path, body, 0, _dicts(parsed), received_at)
            handler.close_connection = True
            return

        canned = self._take_canned()
        if canned is not None:
            payload = canned.body.encode() if canned.body is not None else _problem(canned.status, "injected")
            headers = {"Retry-After": canned.retry_after} if canned.retry_after is not None else {}
            if canned.location is not None:
                headers["Location"] = canned.location
            self._record_request(handler, path, body, canned.status, _dicts(parsed), received_at)
            _answer(handler, canned.status, payload, headers)
            return

        status, detail = self._check(handler, path, has_length, parsed, parse_error)
        if status != 202 or parsed is None:
            self._record_request(handler, path, body, status, _dicts(parsed), received_at)
            headers = {"Allow": "POST"} if status == 405 else {}
            _answer(handler, status, _problem(status, detail), headers)
            return

        with self._cond:
            self._answering += 1
        try:
            self._accept(handler, path, body, parsed, received_at)
            timestamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            _answer(handler, 202, _json({"title": "Accepted", "status": 202, "timestamp": timestamp}))
        finally:
            with self._cond:
                self._answering -= 1
                self._cond.notify_all()

    def _check(
        self,
        handler: _Handler,
        path: str,
        has_length: bool,
        parsed: list[Any] | None,
        parse_error: str,
    ) -> tuple[int, str]:
        """Return (202, "") for an acceptable request, else the error status and its detail."""
        if path != EVENTS_PATH:
            return 404, f"no such path: {path}"
        if handler.command != "POST":
            return 405, f"{handler.command} is not allowed; use POST"
        key = handler.headers.get("x-api-key")
        keys = self._api_keys
        if not key:
            return 401, "missing x-api-key header"
        if keys and key not in keys:
            return 401, "invalid x-api-key"
        content_type = handler.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return 415, f"content-type must be application/json, not {content_type!r}"
        if not has_length:
            return 411, "Content-Length or chunked transfer encoding required"
        if parsed is None:
            return 400, parse_error
        problem = _check_events(parsed)
        if problem:
            return 400, problem
        with self._cond:
            reject, reject_status = self._reject, self._reject_status
        if reject is not None:
            for index, event in enumerate(parsed):
                try:
                    rejected = reject(event)
                except Exception:
                    _log.exception("OdpCollector reject_events predicate raised")
                    return 500, "the reject_events predicate raised"
                if rejected:
                    return reject_status, f"events[{index}] was rejected"
        return 202, ""

    def _accept(
        self, handler: _Handler, path: str, body: bytes, events: list[dict[str, Any]], received_at: float
    ) -> None:
        callback = self.on_event
        if callback is not None:
            for event in events:
                try:
                    callback(event)
                except Exception:
                    _log.exception("OdpCollector.on_event raised")
        ids: list[str] = []
        if self._record:
            for event in events:
                data = event.get("data")
                if data and isinstance(data.get("idempotence_id"), str):
                    ids.append(data["idempotence_id"])
        with self._cond:
            self._event_count += len(events)
            if self._record:
                self._events.extend(events)
                self._idempotence_ids.update(ids)
            self._record_request(handler, path, body, 202, events, received_at)

    def _record_request(
        self,
        handler: _Handler,
        path: str,
        body: bytes,
        status: int,
        events: list[dict[str, Any]],
        received_at: float,
    ) -> None:
        with self._cond:
            self._request_count += 1
            if self._record:
                headers = {name.lower(): value for name, value in handler.headers.items()}
                self._requests.append(
                    RecordedRequest(handler.command, path, headers, body, status, events, received_at)
                )
            self._cond.notify_all()


# --------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.collector._connection_opened(self.connection)

    def finish(self) -> None:
        self.server.collector._connection_closed(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging to stderr."""

    def _dispatch(self) -> None:
        self.server.collector._handle(self)

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the default of 5 drops SYNs under many concurrent clients

    def __init__(self, address: tuple[str, int], collector: OdpCollector) -> None:
        self.collector = collector
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skips HTTPServer's getfqdn() lookup
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away, or stop() closed the connection
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _loopback_address(host: str) -> str:
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(f"OdpCollector binds only loopback addresses (127.x.x.x, localhost, ::1): {host!r}")
    return str(address)


def _read_body(handler: _Handler) -> tuple[bytes, bool]:
    """Read the whole body; return it and whether the request declared its length.

    Raises:
        ValueError: On a malformed Content-Length, a malformed chunk or a truncated body.
    """
    if "chunked" in handler.headers.get("transfer-encoding", "").lower():
        return _read_chunked(handler.rfile), True
    length = handler.headers.get("content-length")
    if length is None:
        return b"", False  # by HTTP/1.1 rules such a request has no body
    size = int(length)
    if size < 0:
        raise ValueError("negative Content-Length")
    body = handler.rfile.read(size)
    if len(body) != size:
        raise ValueError("truncated body")
    return body, True


def _read_chunked(rfile: io.BufferedIOBase) -> bytes:
    parts = []
    while True:
        size = int(rfile.readline(65537).split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(65537).strip():
            raise ValueError("malformed chunk")
        parts.append(chunk)
    while rfile.readline(65537).strip():  # trailer fields, up to the empty line
        pass
    return b"".join(parts)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_events(body: bytes) -> tuple[list[Any] | None, str]:
    """Parse a body as strict JSON: a list of events or one event object."""
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return None, f"the body is not valid JSON: {exc}"
    if isinstance(document, list):
        return document, ""
    if isinstance(document, dict):
        return [document], ""
    return None, "the body must be a JSON array of event objects or one event object"


def _check_events(events: list[Any]) -> str:
    """Return a description of the first problem in a batch of events, or "" if there is none."""
    if not events:
        return "the event list is empty"
    if len(events) > MAX_EVENTS_PER_REQUEST:
        return f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}"
    scalars = _SCALAR_TYPES
    for index, event in enumerate(events):
        if type(event) is not dict:
            return f"events[{index}] must be an object"
        kind, action, identifiers = event.get("type"), event.get("action"), event.get("identifiers")
        if type(kind) is not str or not kind:
            return f"events[{index}].type must be a non-empty string"
        if type(action) is not str or not action:
            return f"events[{index}].action must be a non-empty string"
        if type(identifiers) is not dict or not identifiers:
            return f"events[{index}].identifiers must be a non-empty object"
        for name, value in identifiers.items():  # the official client sends numbers, booleans, null too
            if type(value) not in scalars:
                return f"events[{index}].identifiers.{name} must be a string, number, boolean or null"
        if "data" in event:
            data = event["data"]
            if type(data) is not dict:
                return f"events[{index}].data must be an object"
            for name, value in data.items():
                if type(value) not in scalars:
                    return f"events[{index}].data.{name} must be a string, number, boolean or null"
    return ""


def _dicts(parsed: list[Any] | None) -> list[dict[str, Any]]:
    return [item for item in parsed if isinstance(item, dict)] if parsed else []


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _problem(status: int, detail: str) -> bytes:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return _json({"title": title, "status": status, "detail": detail})


def _answer(
    handler: _Handler,
    status: int,
    payload: bytes,
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> None:
    if status in (204, 304):
        payload = b""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if close:
        handler.send_header("Connection", "close")
    handler.end_headers()
    if payload and handler.command != "HEAD":
        handler.wfile.write(payload)
