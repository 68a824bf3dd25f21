"""Durable stores for accepted events, behind one :class:`~optimizely_odp_ext.spool.base.Spool` protocol.

``SqliteSpool`` (embedded, ``spool_path``) is imported on first use, so a manager without a
spool never loads ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_odp_ext._lazy import lazy_exports
from optimizely_odp_ext.spool.base import (
    Spool,
    SpooledEvent,
    SpoolError,
    SpoolId,
    SpoolLockedError,
    SpoolRecord,
    SpoolUnavailableError,
)

if TYPE_CHECKING:
    from optimizely_odp_ext.spool.sqlite import SqliteSpool

__all__ = [
    "Spool",
    "SpoolError",
    "SpoolId",
    "SpoolLockedError",
    "SpoolRecord",
    "SpoolUnavailableError",
    "SpooledEvent",
    "SqliteSpool",
]

__getattr__, __dir__ = lazy_exports(__name__, {"SqliteSpool": "optimizely_odp_ext.spool.sqlite"}, __all__, globals())
