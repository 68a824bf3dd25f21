"""The typed result of ``send_odp_event`` and the reasons an event can be discarded."""

from __future__ import annotations

from enum import Enum


class DiscardReason(str, Enum):
    """Why an event was not accepted for delivery (or was later given up on).

    The values are the names the Optimizely docs and the Go/Flutter SDKs use where
    one exists (``sdkNotReady``, ``odpNotEnabled``, ``odpNotIntegrated``).
    """

    SDK_NOT_READY = "sdkNotReady"
    ODP_NOT_ENABLED = "odpNotEnabled"
    ODP_NOT_INTEGRATED = "odpNotIntegrated"
    INVALID_ACTION = "invalidAction"
    INVALID_TYPE = "invalidType"
    INVALID_IDENTIFIERS = "invalidIdentifiers"
    INVALID_DATA = "invalidData"
    QUEUE_FULL = "queueFull"
    CLOSED = "closed"
    # Reasons that only apply after acceptance (counted in stats, sent as notifications).
    REJECTED = "rejectedByServer"
    EXPIRED = "expired"
    CAPACITY = "capacity"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internalError"

    def __str__(self) -> str:
        return self.value


class SendResult:
    """What ``send_odp_event`` returns.

    Truthy when the event was accepted for delivery; otherwise falsy, with
    ``reason`` saying why and ``message`` the line that was logged. Immutable, compared and
    hashed by its three fields (as a frozen dataclass, without a dataclass's import cost).
    """

    __slots__ = ("accepted", "message", "reason")
    accepted: bool
    reason: DiscardReason | None
    message: str

    def __init__(self, accepted: bool, reason: DiscardReason | None = None, message: str = "") -> None:
        object.__setattr__(self, "accepted", accepted)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "message", message)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SendResult is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SendResult is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[bool, DiscardReason | None, str]:
        return (self.accepted, self.reason, self.message)

    def __eq__(self, other: object) -> bool:
        return self._fields() == other._fields() if isinstance(other, SendResult) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[type[SendResult], tuple[bool, DiscardReason | None, str]]:
        return (SendResult, self._fields())  # copy and pickle through __init__

    def __repr__(self) -> str:
        return f"SendResult(accepted={self.accepted!r}, reason={self.reason!r}, message={self.message!r})"

    def __bool__(self) -> bool:
        return self.accepted

    @property
    def success(self) -> bool:
        """The Flutter SDK's name for ``accepted``."""
        return self.accepted

    @classmethod
    def discarded(cls, reason: DiscardReason, message: str) -> SendResult:
        return cls(False, reason, message)


ACCEPTED = SendResult(True)
"""The single result every accepted event shares (no allocation on the hot path)."""
