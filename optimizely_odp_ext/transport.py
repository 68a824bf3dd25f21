"""One batch → one ``POST {host}/v3/events`` over a pooled session → a typed outcome.

Every ``requests`` error is translated here, at one boundary; nothing above this
module sees an exception from the HTTP stack.
"""

from __future__ import annotations

import email.utils
import time
from enum import Enum
from typing import Any, NamedTuple

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

from optimizely_odp_ext.encoding import JoinedBody
from optimizely_odp_ext.integration import OdpIntegration, mask_key

RETRYABLE_STATUSES = frozenset({408, 429})
SPLITTABLE_STATUSES = frozenset({400, 413, 422})
UNAUTHORIZED_STATUSES = frozenset({401, 403})
ENVIRONMENT_TTL = 1.0
"""Seconds what the session makes for a destination is reused: the settings ``requests`` reads
from the environment for its URL (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...;
reading them cost about 75 µs, every environment variable scanned), and the request it prepares
(its headers, and ``.netrc`` credentials when there are any). A change to the environment is
followed within that time."""


class OutcomeKind(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    """Network error, timeout, 408, 429 or 5xx: send again later."""
    REJECTED = "rejected"
    """400/413/422: something in the batch is refused; split it to find what."""
    UNAUTHORIZED = "unauthorized"
    """401/403: the API key is refused; wait for a new one."""
    FAILED = "failed"
    """Any other answer, or a request that cannot be made at all (bad URL): give up."""


class Outcome(NamedTuple):
    kind: OutcomeKind
    status: int = 0
    """The HTTP status, 0 when there was no answer."""
    detail: str = ""
    retry_after: float | None = None
    """Seconds the server asked us to wait (``Retry-After``), if it did."""


class Transport:
    """Sends batches over one keep-alive ``requests.Session``. Thread-safe: up to
    ``pool_size`` requests share the pool's connections at once. ``send`` blocks for
    at most about ``timeout`` seconds per phase (connect, read).

    A request goes through the session's adapter (``HTTPAdapter.send``) with the request the
    session prepared for its destination, its settings from the environment, and the batch's
    body: the bytes on the wire are those of ``session.post``. What the session would add
    around it, and a POST to ODP has no use for, is skipped: preparing the request anew
    (merging headers, reading ``.netrc``), keeping cookies, calling hooks. That was 0.6 ms of
    a 500-event request's 1.1 ms of CPU. A redirect is the one answer that needs the session:
    the request is then made again with ``session.post``, which follows it."""

    def __init__(self, timeout: float = 10.0, pool_size: int = 4) -> None:
        self.timeout = timeout
        self.session = requests.Session()
        self._adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", self._adapter)
        self.session.mount("http://", self._adapter)
        self._prepared: dict[OdpIntegration, _Prepared] = {}

    def send(self, integration: OdpIntegration, body: bytes | JoinedBody, timeout: float | None = None) -> Outcome:
        """POST one batch (its bytes, or a large body made while it is sent, with its length as
        ``Content-Length``); never raises: every failure is an :class:`Outcome` (whose detail
        never holds the API key). Blocks for at most about ``timeout`` seconds (default and
        upper limit: the transport's own) for connecting and for each read."""
        limit = self.timeout if timeout is None else min(self.timeout, timeout)
        try:
            bound: Any = Timeout(connect=limit, read=limit, total=limit)  # requests passes it to urllib3
            prepared = self._prepare(integration)
            request = prepared.request.copy()
            request.prepare_body(body, None)  # and its Content-Length
            settings = prepared.settings
            response = self._adapter.send(request, timeout=bound, verify=settings["verify"], cert=settings["cert"],
                                          proxies=settings["proxies"])
            if response.is_redirect:
                response.close()
                response = self.session.post(integration.events_url, data=body, headers=_headers(integration),
                                             timeout=bound)
            text = response.text  # read it all, so the connection goes back to the pool
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            return Outcome(OutcomeKind.RETRY, detail=f"network error: {type(error).__name__}")
        except requests.RequestException as error:
            detail = _without_key(f"{type(error).__name__}: {error}", integration.api_key)
            return Outcome(OutcomeKind.FAILED, detail=f"request failed: {detail}")
        except Exception as error:  # not requests' own: keep the events and try again later
            detail = _without_key(f"{type(error).__name__}: {error}", integration.api_key)
            return Outcome(OutcomeKind.RETRY, detail=f"unexpected error: {detail}")
        return classify(response.status_code, text, response.headers.get("retry-after"))

    def close(self) -> None:
        self.session.close()

    def _prepare(self, integration: OdpIntegration) -> _Prepared:
        """What the session makes for a POST to ``integration`` (body aside), made again after
        :data:`ENVIRONMENT_TTL`."""
        now = time.monotonic()
        made = self._prepared.get(integration)
        if made is None or now - made.at >= ENVIRONMENT_TTL:
            if len(self._prepared) >= 16:  # destinations of earlier datafiles
                self._prepared.clear()
            url = integration.events_url
            request = requests.Request("POST", url, headers=_headers(integration), data=b"")
            made = self._prepared[integration] = _Prepared(
                now, self.session.prepare_request(request),
                self.session.merge_environment_settings(url, {}, None, None, None))
        return made


class _Prepared(NamedTuple):
    at: float
    """``time.monotonic()`` when it was made."""
    request: requests.PreparedRequest
    """Copied for each request (``HTTPAdapter.send`` is given a request of its own)."""
    settings: Any
    """``verify``, ``cert`` and ``proxies`` from the environment (read, never changed)."""


def _headers(integration: OdpIntegration) -> dict[str, str]:
    return {"content-type": "application/json", "x-api-key": integration.api_key}


def _without_key(text: str, api_key: str) -> str:
    """``text`` with the API key (and its ``repr``) masked: exception texts may quote headers."""
    if api_key:
        for form in (repr(api_key)[1:-1], api_key.strip(), api_key):
            if form:
                text = text.replace(form, mask_key(api_key))
    return text


def classify(status: int, text: str = "", retry_after: str | None = None) -> Outcome:
    """The outcome of an HTTP answer."""
    detail = f"HTTP {status}" + (f": {text[:200]}" if text and status >= 300 else "")
    if 200 <= status < 300:
        return Outcome(OutcomeKind.DELIVERED, status)
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome(OutcomeKind.RETRY, status, detail, parse_retry_after(retry_after))
    if status in SPLITTABLE_STATUSES:
        return Outcome(OutcomeKind.REJECTED, status, detail)
    if status in UNAUTHORIZED_STATUSES:
        return Outcome(OutcomeKind.UNAUTHORIZED, status, detail, parse_retry_after(retry_after))
    return Outcome(OutcomeKind.FAILED, status, detail)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
