"""Local stand-ins for what the base SDK talks to, so tests and examples stay on 127.0.0.1.

- :class:`RecordingEventDispatcher`: an ``event_dispatcher`` for the base SDK that keeps
  impression and conversion events in memory instead of sending them to Optimizely.
- :class:`DatafileServer`: serves a datafile on loopback for ``PollingConfigManager(url=...)``,
  and lets a test change it (or make it fail) to exercise datafile updates.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingEventDispatcher:
    """Keeps the base SDK's impression/conversion events in ``events``. Thread-safe."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def dispatch_event(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)


class DatafileServer:
    """Serves one datafile at ``url`` on 127.0.0.1 (a free port); a context manager.

    ``set_datafile`` changes what the next fetch gets; ``set_status`` makes fetches fail
    (e.g. 503) until set back to 200. Thread-safe.
    """

    def __init__(self, datafile: str | dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._body = b""
        self._status = 200
        self.fetches = 0
        if datafile is not None:
            self.set_datafile(datafile)
        else:
            self._status = 503
        self._server: ThreadingHTTPServer | None = None

    def set_datafile(self, datafile: str | dict[str, Any]) -> None:
        text = datafile if isinstance(datafile, str) else json.dumps(datafile)
        with self._lock:
            self._body = text.encode()
            self._status = 200

    def set_status(self, status: int) -> None:
        with self._lock:
            self._status = status

    @property
    def url(self) -> str:
        assert self._server is not None, "DatafileServer is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/datafile.json"

    def start(self) -> DatafileServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.fetches += 1
                    status, body = owner._status, owner._body if owner._status == 200 else b"{}"
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="datafile-server",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> DatafileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SAMPLE = "sample_datafile.json"


def sample_datafile(host: str | None = None, api_key: str | None = None) -> dict[str, Any]:
    """A small valid datafile (one flag, one experiment, one event ``purchase``).

    With ``host`` and ``api_key`` its ODP integration points there; with neither it has
    no ODP integration at all (ODP not integrated).
    """
    from importlib import resources

    datafile: dict[str, Any] = json.loads(resources.files(__package__).joinpath(_SAMPLE).read_text())
    if host is None and api_key is None:
        datafile.pop("integrations", None)
    else:
        datafile["integrations"] = [{"key": "odp", "host": host, "publicKey": api_key}]
    return datafile
