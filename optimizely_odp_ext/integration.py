"""The ODP integration (host and public key) a datafile declares, and its state.

A datafile's ``odp`` entry is only used when it can be: a host that is an ``http(s)`` URL
with a host name and no query or fragment, and a key that can travel as an HTTP header
value. Anything else is *malformed*: ODP counts as not integrated, and the client logs one
error line naming the problem (the key masked). Nothing here raises on a bad entry.
"""

from __future__ import annotations

import ipaddress
import json
from enum import Enum
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

EVENTS_PATH = "/v3/events"


class IntegrationState(Enum):
    """Whether ODP is integrated, as far as the datafile tells."""

    UNDETERMINED = "undetermined"
    """No datafile yet (an ``sdk_key`` client still fetching)."""
    INTEGRATED = "integrated"
    NOT_INTEGRATED = "notIntegrated"
    """No ``odp`` entry, an entry without host or key, or a malformed one."""


class OdpIntegration:
    """Where events go: an ODP host and the public API key that goes with it.

    Events remember the integration that was active when they were accepted. Build one
    from untrusted input with :func:`integration_from_entry`, which checks it. Immutable,
    compared and hashed by host and key.
    """

    __slots__ = ("_events_url", "_parsed", "api_key", "host")
    host: str
    api_key: str
    _parsed: SplitResult | None
    _events_url: str | None

    def __init__(self, host: str, api_key: str) -> None:
        try:
            parsed: SplitResult | None = urlsplit(host) if isinstance(host, str) else None
        except ValueError:
            parsed = None
        for name, value in (("host", host), ("api_key", api_key), ("_parsed", parsed), ("_events_url", None)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"OdpIntegration is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"OdpIntegration is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OdpIntegration):
            return NotImplemented
        return self.host == other.host and self.api_key == other.api_key

    def __hash__(self) -> int:
        return hash((self.host, self.api_key))

    def __reduce__(self) -> tuple[type[OdpIntegration], tuple[str, str]]:
        return (OdpIntegration, (self.host, self.api_key))  # copy and pickle through __init__

    @property
    def events_url(self) -> str:
        """``{scheme}://{host[:port]}{path}/v3/events``: built from the parsed host, so a
        trailing slash or a base path is kept in the right place."""
        url: str | None = self._events_url
        if url is None:
            parsed: SplitResult | None = self._parsed
            if parsed is None:
                url = str(self.host).rstrip("/") + EVENTS_PATH
            else:
                url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}{EVENTS_PATH}"
            object.__setattr__(self, "_events_url", url)
        return url

    @property
    def is_plain_http_remote(self) -> bool:
        """True for an ``http://`` host that is not on this machine (worth a warning).

        "On this machine" means the parsed host name is exactly ``localhost`` or an IP
        address that is a loopback address; anything else (``127.0.0.1.nip.io``,
        ``localhost.example``) may be elsewhere.
        """
        parsed = self._parsed
        if parsed is None or parsed.scheme.lower() != "http":
            return False
        return not is_loopback_host(parsed.hostname)

    def __repr__(self) -> str:
        return f"OdpIntegration(host={self.host!r}, api_key={mask_key(self.api_key)!r})"


class IntegrationEntry(NamedTuple):
    """What a datafile's ``odp`` entry amounts to."""

    integration: OdpIntegration | None
    """Set when the entry is usable."""
    problem: str | None = None
    """Why a present entry is not used (malformed), for the one error line; key masked."""


NO_ENTRY = IntegrationEntry(None)


def is_loopback_host(hostname: str | None) -> bool:
    """True for exactly ``localhost`` or a loopback IP address (``127.0.0.0/8``, ``::1``)."""
    if not hostname:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def mask_key(key: object) -> str:
    """The API key as it may appear in logs and errors: never in full, whatever it is."""
    if not isinstance(key, str):
        return "<none>" if key is None else f"<not a string: {type(key).__name__}>"
    if not key:
        return "<none>"
    if len(key) <= 8:
        return key[:1] + "***"
    return key[:4] + "..." + key[-2:]


def host_problem(host: object) -> str | None:
    """Why ``host`` cannot be an ODP host, or None when it can."""
    if not isinstance(host, str):
        return f"host is not a string ({type(host).__name__})"
    if not host:
        return "host is empty"
    if host != host.strip() or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in host):
        return f"host {host.strip()!r} contains whitespace or control characters"
    try:
        parsed = urlsplit(host)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        return f"host {host!r} is not a URL ({error})"
    if parsed.scheme.lower() not in ("http", "https"):
        return f"host {host!r} is not an http(s) URL"
    if not parsed.hostname:
        return f"host {host!r} has no host name"
    if parsed.query or host.endswith("?"):
        return f"host {host!r} has a query string"
    if parsed.fragment or "#" in host:
        return f"host {host!r} has a fragment"
    return None


def key_problem(key: object) -> str | None:
    """Why ``key`` cannot be sent as the ``x-api-key`` header, or None when it can.

    A usable key is printable ASCII without whitespace (stray spaces or a newline from a
    copy-paste make it malformed). The message masks the key.
    """
    if not isinstance(key, str):
        return f"publicKey is not a string ({type(key).__name__})"
    if not key:
        return "publicKey is empty"
    if not key.isascii() or not all("!" <= ch <= "~" for ch in key):
        return (f"publicKey {mask_key(key.strip())} has whitespace, control or non-ASCII characters, "
                "so it cannot be sent as an HTTP header")
    return None


def integration_from_entry(host: object, key: object) -> IntegrationEntry:
    """Check an ``odp`` entry's ``host`` and ``publicKey`` (as the datafile has them).

    Both missing or empty: not integrated, no problem (as optimizely-sdk 5.x). Otherwise
    an :class:`OdpIntegration` when both are usable, or the problem. Never raises.
    """
    if _absent(host) and _absent(key):
        return NO_ENTRY
    problem = host_problem(host) or key_problem(key)
    if problem is not None:
        return IntegrationEntry(None, problem)
    assert isinstance(host, str) and isinstance(key, str)
    return IntegrationEntry(OdpIntegration(host, key))


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value)


def integration_from_datafile(datafile: dict[str, Any]) -> IntegrationEntry:
    """The ODP integration of a parsed datafile.

    As in optimizely-sdk 5.x, the first entry of ``integrations`` whose ``key`` is
    ``"odp"`` counts.
    """
    integrations = datafile.get("integrations")
    if not isinstance(integrations, list):
        return NO_ENTRY
    for entry in integrations:
        if isinstance(entry, dict) and entry.get("key") == "odp":
            return integration_from_entry(entry.get("host"), entry.get("publicKey"))
    return NO_ENTRY


def integration_from_json(datafile_json: str | bytes) -> IntegrationEntry:
    """Like :func:`integration_from_datafile`, from the datafile's JSON text."""
    parsed = json.loads(datafile_json)
    return integration_from_datafile(parsed) if isinstance(parsed, dict) else NO_ENTRY
