"""The typed result of ``send_odp_event`` and the reasons an event can be discarded."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class SendResult:
    """What ``send_odp_event`` returns.

    Truthy when the event was accepted for delivery; otherwise falsy, with
    ``reason`` saying why and ``message`` the line that was logged.
    """

    accepted: bool
    reason: DiscardReason | None = None
    message: str = ""

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
