"""An ODP event, and building one from a ``send_odp_event`` call.

Building validates and copies the caller's input, so the caller's dicts are never
mutated and later changes to them do not reach the event. It runs on the caller's
thread and is kept small; default data and the JSON encoding are added later, on
the sender's side (:meth:`OdpEvent.to_json`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any, Union

from optimizely_odp_ext.compat import SDK_VERSION
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.result import DiscardReason

Scalar = Union[str, int, float, bool, None]
OdpData = dict[str, Scalar]

DEFAULT_EVENT_TYPE = "fullstack"
USER_ID_KEY = "fs_user_id"
_USER_ID_ALIASES = ("fs_user_id", "fs-user-id")
_SCALARS = (str, int, float, bool, type(None))
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def new_idempotence_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` but about 3x cheaper.

    An idempotence id must be unique, not secret, so the ``random`` module's generator
    (seeded from the OS, and reseeded in a forked child) serves instead of ``os.urandom``.
    """
    digits = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


Pairs = Union[Mapping[str, Any], Iterable[tuple[str, Any]]]
"""A dict, or its ``items()`` (how a manager may keep an event compactly)."""


def wire_data(data: Pairs | None) -> OdpData:
    """The ``data`` object as the official client sends it: the default data (a new
    idempotence id each call), then the caller's on top (same keys keep their place)."""
    wire: OdpData = {
        "idempotence_id": new_idempotence_id(),
        "data_source_type": "sdk",
        "data_source": "python-sdk",
        "data_source_version": SDK_VERSION,
    }
    if data:
        wire.update(data)
    return wire


def wire_dict(type: str, action: str, identifiers: Pairs, data: Pairs | None) -> dict[str, Any]:
    """One event as ODP receives it, in the official client's key order."""
    return {"type": type, "action": action, "identifiers": dict(identifiers), "data": wire_data(data)}


class InvalidEventError(ValueError):
    """The input of ``send_odp_event`` is not a valid ODP event."""

    def __init__(self, reason: DiscardReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OdpEvent:
    """One accepted ODP event, bound to the integration that was active when accepted.

    Thread-safe to read; its fields are not changed after construction except
    ``integration`` (set once when an event held before the datafile was ready is
    released) and the idempotence id cached by :meth:`to_json`.
    """

    __slots__ = ("_json", "accepted_at", "action", "data", "identifiers", "integration", "type")

    def __init__(
        self,
        type: str,
        action: str,
        identifiers: dict[str, str],
        data: OdpData | None = None,
        integration: OdpIntegration | None = None,
        accepted_at: float | None = None,
    ) -> None:
        self.type = type
        self.action = action
        self.identifiers = identifiers
        self.data = data
        self.integration = integration
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at
        self._json: bytes | None = None

    def wire_data(self) -> OdpData:
        """The ``data`` object as sent: the default data, then the caller's on top."""
        return wire_data(self.data)

    def to_dict(self) -> dict[str, Any]:
        """The event as ODP receives it (a new idempotence id each call: prefer :meth:`to_json`)."""
        return wire_dict(self.type, self.action, self.identifiers, self.data)

    def to_json(self) -> bytes:
        """The event's JSON, computed once: its idempotence id stays the same across retries."""
        if self._json is None:
            self._json = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()
        return self._json

    def __repr__(self) -> str:
        return f"OdpEvent(type={self.type!r}, action={self.action!r})"


def build_event(
    action: object,
    identifiers: object,
    type: object = DEFAULT_EVENT_TYPE,
    data: object = None,
) -> OdpEvent:
    """Validate a ``send_odp_event`` call and build the event from copies of its input.

    Non-blocking and thread-safe. Raises :class:`InvalidEventError` naming the problem.
    """
    if not isinstance(action, str) or not action:
        detail = "cannot be empty" if action is None or action == "" else f"must be a string, not {_kind(action)}"
        raise InvalidEventError(DiscardReason.INVALID_ACTION, f"ODP action is not valid ({detail}).")
    if type is None or type == "":
        type = DEFAULT_EVENT_TYPE
    elif not isinstance(type, str):
        raise InvalidEventError(
            DiscardReason.INVALID_TYPE, f"ODP event type is not valid (must be a string, not {_kind(type)})."
        )
    return OdpEvent(type, action, _copy_identifiers(identifiers), _copy_data(data))


def _copy_identifiers(identifiers: object) -> dict[str, str]:
    if not isinstance(identifiers, dict) or not identifiers:
        what = "is empty" if isinstance(identifiers, dict) else f"must be a dict, not {_kind(identifiers)}"
        raise InvalidEventError(
            DiscardReason.INVALID_IDENTIFIERS,
            f"ODP identifiers are not valid ({what}): ODP events must have at least one key-value pair "
            "in identifiers.",
        )
    copy: dict[str, str] = {}
    user_id_alias: str | None = None
    for key, value in identifiers.items():
        if not isinstance(key, str) or not key:
            problem = "an empty key" if key == "" else f"a key that is not a string ({_kind(key)})"
            raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS, f"ODP identifiers are not valid ({problem}).")
        if not isinstance(value, str):
            raise InvalidEventError(
                DiscardReason.INVALID_IDENTIFIERS,
                f"ODP identifiers are not valid (value of {key!r} must be a string, not {_kind(value)}).",
            )
        copy[key] = value
        if user_id_alias is None and key.lower() in _USER_ID_ALIASES:
            user_id_alias = key
    if user_id_alias is not None and user_id_alias != USER_ID_KEY:
        # The same rename as optimizely-sdk 5.x (the first alias becomes fs_user_id), on our copy.
        copy[USER_ID_KEY] = copy.pop(user_id_alias)
    return copy


def _copy_data(data: object) -> OdpData | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidEventError(
            DiscardReason.INVALID_DATA, f"ODP data is not valid (must be a dict, not {_kind(data)})."
        )
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidEventError(
                DiscardReason.INVALID_DATA, f"ODP data is not valid (a key that is not a string: {_kind(key)})."
            )
        if not isinstance(value, _SCALARS):
            raise InvalidEventError(
                DiscardReason.INVALID_DATA,
                f"ODP data is not valid (value of {key!r} is {_kind(value)}; "
                "only str, int, float, bool and None are allowed).",
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEventError(
                DiscardReason.INVALID_DATA, f"ODP data is not valid (value of {key!r} is {value}, not valid JSON)."
            )
    return dict(data) if data else None


def _kind(value: object) -> str:
    return "None" if value is None else type(value).__name__
