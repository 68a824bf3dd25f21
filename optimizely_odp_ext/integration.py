"""The ODP integration (host and public key) a datafile declares, and its state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

LOOPBACK_HOSTS = ("127.", "localhost", "[::1]")


class IntegrationState(Enum):
    """Whether ODP is integrated, as far as the datafile tells."""

    UNDETERMINED = "undetermined"
    """No datafile yet (an ``sdk_key`` client still fetching)."""
    INTEGRATED = "integrated"
    NOT_INTEGRATED = "notIntegrated"


@dataclass(frozen=True)
class OdpIntegration:
    """Where events go: an ODP host and the public API key that goes with it.

    Events remember the integration that was active when they were accepted.
    """

    host: str
    api_key: str

    @property
    def events_url(self) -> str:
        return self.host.rstrip("/") + "/v3/events"

    @property
    def is_plain_http_remote(self) -> bool:
        """True for an ``http://`` host that is not on this machine (worth a warning)."""
        if not self.host.lower().startswith("http://"):
            return False
        rest = self.host[len("http://"):]
        return not rest.startswith(LOOPBACK_HOSTS)

    def __repr__(self) -> str:
        return f"OdpIntegration(host={self.host!r}, api_key={mask_key(self.api_key)!r})"


def mask_key(key: str | None) -> str:
    """The API key as it may appear in logs and errors: never in full."""
    if not key:
        return "<none>"
    if len(key) <= 8:
        return key[:1] + "***"
    return key[:4] + "..." + key[-2:]


def integration_from_datafile(datafile: dict[str, Any]) -> OdpIntegration | None:
    """The ODP integration of a parsed datafile, or None when it declares none.

    As in optimizely-sdk 5.x, the first entry of ``integrations`` whose ``key`` is
    ``"odp"`` counts, and it is integrated only if both ``host`` and ``publicKey`` are set.
    """
    for entry in datafile.get("integrations") or ():
        if isinstance(entry, dict) and entry.get("key") == "odp":
            host, key = entry.get("host"), entry.get("publicKey")
            if isinstance(host, str) and host and isinstance(key, str) and key:
                return OdpIntegration(host, key)
            return None
    return None


def integration_from_json(datafile_json: str | bytes) -> OdpIntegration | None:
    """Like :func:`integration_from_datafile`, from the datafile's JSON text."""
    parsed = json.loads(datafile_json)
    return integration_from_datafile(parsed) if isinstance(parsed, dict) else None
