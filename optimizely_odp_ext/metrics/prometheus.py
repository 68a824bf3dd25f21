"""``odp_stats()`` as Prometheus metrics: a custom collector read at each scrape.

Needs ``prometheus-client`` (``pip install 'optimizely-odp-ext[prometheus]'``)::

    from optimizely_odp_ext.metrics.prometheus import register

    register(client)                            # the global registry, label client="default"
    register(other_client, name="backfill")     # same metric names, client="backfill"

Every metric carries a ``client`` label (the name you give; ``default`` unless you say),
so several clients in one process share one set of metric names and sum naturally
(``sum by (reason) (rate(odp_events_dropped_total[5m]))``). Counters end in ``_total``;
gauges are current levels; bytes and seconds carry their unit in the name. The API key is
never a label. See :mod:`optimizely_odp_ext.metrics.schema` for the full table.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "optimizely_odp_ext.metrics.prometheus needs prometheus-client: "
        "pip install 'optimizely-odp-ext[prometheus]'"
    ) from _missing

from optimizely_odp_ext.metrics.schema import ALL, Kind, MetricSpec
from optimizely_odp_ext.metrics.sources import DEFAULT_NAME, Sources, StatsSource

__all__ = ["OdpMetricsCollector", "register", "unregister"]

CLIENT_LABEL = "client"


class OdpMetricsCollector:
    """A Prometheus collector reporting ``odp_stats()`` of one or more clients.

    Args:
        registry: Where to register (default the global ``REGISTRY``); ``None`` registers
            nowhere (call ``registry.register(collector)`` yourself).

    ``collect`` runs at each scrape, on the scraping thread: it calls ``odp_stats()`` of
    each client (a snapshot under the manager's lock; no I/O). Thread-safe.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._sources = Sources()
        if registry is not None:
            registry.register(self)

    def add(self, client: StatsSource, name: str = DEFAULT_NAME) -> None:
        """Report ``client`` with the label ``client=name``. Non-blocking; thread-safe.

        Raises:
            ValueError: another client already has ``name``, or ``name`` is not 1-64
                letters, digits or ``_.:/-``.
        """
        self._sources.add(client, name)

    def remove(self, name: str = DEFAULT_NAME) -> bool:
        """Stop reporting the client named ``name``; True if there was one. Thread-safe."""
        return self._sources.remove(name)

    def describe(self) -> Iterable[Metric]:
        """Every family this collector may report, without samples (for the registry's
        duplicate check; ``odp_stats()`` is not called)."""
        return [_family(spec) for spec in ALL]

    def collect(self) -> Iterable[Metric]:
        """The families with at least one sample, from a fresh ``odp_stats()`` of each client."""
        families: dict[MetricSpec, Metric] = {}
        for name, readings in self._sources.readings():
            for reading in readings:
                family = families.get(reading.spec)
                if family is None:
                    family = families[reading.spec] = _family(reading.spec)
                labels = [name, *(value for _, value in reading.labels)]
                family.add_metric(labels, reading.value)  # type: ignore[attr-defined]
        return [families[spec] for spec in ALL if spec in families]


def _family(spec: MetricSpec) -> Metric:
    labels = [CLIENT_LABEL, *spec.labels]
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.name, spec.description, labels=labels, unit=spec.unit.prometheus)
    return GaugeMetricFamily(spec.name, spec.description, labels=labels, unit=spec.unit.prometheus)


_per_registry: weakref.WeakKeyDictionary[CollectorRegistry, OdpMetricsCollector] = weakref.WeakKeyDictionary()
_per_registry_lock = threading.Lock()


def register(client: StatsSource, *, name: str = DEFAULT_NAME,
             registry: CollectorRegistry | None = None) -> OdpMetricsCollector:
    """Report ``client``'s ``odp_stats()`` on ``registry`` (default the global one) with the
    label ``client=name``. Clients registered on the same registry share one collector.

    The client stays reported (and referenced) until ``unregister(name)``.
    Non-blocking; thread-safe.

    Raises:
        ValueError: another client is already registered on ``registry`` as ``name``.
    """
    target = REGISTRY if registry is None else registry
    with _per_registry_lock:
        collector = _per_registry.get(target)
        if collector is None:
            collector = _per_registry[target] = OdpMetricsCollector(target)
    collector.add(client, name)
    return collector


def unregister(name: str = DEFAULT_NAME, *, registry: CollectorRegistry | None = None) -> bool:
    """Stop reporting the client registered as ``name`` on ``registry``; True if there was
    one. Thread-safe."""
    with _per_registry_lock:
        collector = _per_registry.get(REGISTRY if registry is None else registry)
    return collector is not None and collector.remove(name)
