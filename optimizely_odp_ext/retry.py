"""The retry rules, written out in one place.

- Network errors, timeouts, 408, 429 and 5xx: retried, with exponential backoff and
  jitter, capped at ``retry_max_backoff``; a ``Retry-After`` from the server wins
  (up to :data:`MAX_RETRY_AFTER`). There is no retry count: an event is given up only
  when it is older than ``max_event_age`` or at shutdown.
- 400, 413, 422: the batch is split in halves until the refused events are alone;
  those are dropped (reason ``rejectedByServer``), the rest delivered.
- 401, 403: the key is refused. The destination backs off like an outage, and its
  events move to the new key as soon as a datafile update brings one.
- Anything else (404, a bad URL, ...): the batch is dropped (``rejectedByServer``).
- While a destination is failing, one request at a time probes it; the first success
  restores full speed.
- A flush or close cuts a backoff short: it tries each destination at once, and while it
  waits retries come at most :data:`HURRIED_BACKOFF` apart (a ``Retry-After`` still wins),
  so a long backoff never outlasts ``close_timeout`` while ODP is back.
"""

from __future__ import annotations

import random

_random = random.Random()

HURRIED_BACKOFF = 1.0
"""The longest wait between two retries while a flush or close is waiting, in seconds."""

MAX_RETRY_AFTER = 600.0
"""The longest ``Retry-After`` honoured, in seconds."""


def backoff_delay(failures: int, initial: float, maximum: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    ceiling = min(maximum, initial * 2.0 ** min(failures - 1, 32))
    jitter: float = (rng or _random).random()
    return ceiling * (0.5 + 0.5 * jitter)
