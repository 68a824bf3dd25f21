"""The clients one exporter reports on, each under the name given to it.

No metrics library is imported here. Thread-safe: an exporter reads on its own thread
(a scrape, a periodic reader) while the application adds or removes clients.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from optimizely_odp_ext.metrics.schema import Reading, read_stats

DEFAULT_NAME = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


@runtime_checkable
class StatsSource(Protocol):
    """Anything with ``odp_stats()``: an ``OdpOptimizely`` client, or your own wrapper."""

    def odp_stats(self) -> Mapping[str, Any]: ...


class Sources:
    """Named stats sources. A source stays reported (and referenced) until it is removed:
    metrics never vanish silently. Thread-safe; no method blocks on I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, StatsSource] = {}
        self._failed: set[str] = set()

    def add(self, source: StatsSource, name: str) -> None:
        """Report ``source`` under ``name`` (the ``client`` label).

        Raises:
            TypeError: ``source`` has no ``odp_stats()``.
            ValueError: ``name`` is empty, longer than 64 characters or has characters other
                than letters, digits and ``_.:/-``; or another client has that name.
        """
        if not isinstance(source, StatsSource):
            raise TypeError(f"expected an object with odp_stats(), such as OdpOptimizely, not {type(source).__name__}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"client name {name!r} must be 1-64 letters, digits or _.:/-")
        with self._lock:
            current = self._sources.get(name)
            if current is not None and current is not source:
                raise ValueError(f"another client is already reported as {name!r}: give each client its own name")
            self._sources[name] = source

    def remove(self, name: str) -> bool:
        """Stop reporting the client named ``name``. True if there was one."""
        with self._lock:
            self._failed.discard(name)
            return self._sources.pop(name, None) is not None

    def names(self) -> list[str]:
        """The names of the clients reported, sorted."""
        with self._lock:
            return sorted(self._sources)

    def readings(self) -> list[tuple[str, list[Reading]]]:
        """(name, readings) of each client, by name. A client whose ``odp_stats()`` raises
        gives no readings (logged once through its ``logger``, if it has one)."""
        with self._lock:
            sources = sorted(self._sources.items())
        result = []
        for name, source in sources:
            try:
                stats = source.odp_stats()
                readings = list(read_stats(stats))
            except Exception as error:  # a broken client must not break the scrape of the others
                self._log_once(source, name, error)
                continue
            result.append((name, readings))
        return result

    def _log_once(self, source: StatsSource, name: str, error: Exception) -> None:
        with self._lock:
            if name in self._failed:
                return
            self._failed.add(name)
        logger = getattr(source, "logger", None)
        if logger is not None:
            logger.error(f"ODP metrics: odp_stats() of client {name!r} failed and is left out of the metrics: "
                         f"{type(error).__name__}: {error}")
