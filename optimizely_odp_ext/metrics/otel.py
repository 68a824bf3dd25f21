"""``odp_stats()`` as OpenTelemetry observable instruments, read by callbacks on a Meter.

Needs ``opentelemetry-api`` (``pip install 'optimizely-odp-ext[otel]'``) and, to export
anything, an OpenTelemetry SDK configured by your application::

    from optimizely_odp_ext.metrics.otel import instrument

    instrument(client)                          # the global MeterProvider's meter
    instrument(other_client, name="backfill")   # same instruments, odp.client="backfill"

Counters (``odp.events.delivered``, ...) are ObservableCounters; levels that add up
across clients (``odp.events.queued``, ``odp.events.in_flight``, ...) are
ObservableUpDownCounters, as OpenTelemetry recommends for a queue's size; the spool's
info and oldest-event time are ObservableGauges. Attributes: ``odp.client`` (the name you
give), ``odp.reason``, ``odp.host``, ``odp.spool.kind``, ``odp.spool.state``; never the
API key. See :mod:`optimizely_odp_ext.metrics.schema` for the full table.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Callable

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "optimizely_odp_ext.metrics.otel needs opentelemetry-api: pip install 'optimizely-odp-ext[otel]'"
    ) from _missing

from optimizely_odp_ext.metrics import schema
from optimizely_odp_ext.metrics.schema import ALL, Kind, MetricSpec, Reading
from optimizely_odp_ext.metrics.sources import DEFAULT_NAME, Sources, StatsSource

__all__ = ["ATTRIBUTES", "OdpMeterInstruments", "instrument", "uninstrument"]

METER_NAME = "optimizely_odp_ext"
ATTRIBUTES = {"client": "odp.client", "reason": "odp.reason", "host": "odp.host",
              "kind": "odp.spool.kind", "state": "odp.spool.state"}
"""Label name (as in :mod:`~optimizely_odp_ext.metrics.schema`) -> OpenTelemetry attribute."""
_NOT_ADDITIVE = frozenset({schema.SPOOL_INFO, schema.SPOOL_OLDEST})


class OdpMeterInstruments:
    """Observable instruments on one Meter reporting ``odp_stats()`` of one or more clients.

    Args:
        meter: The Meter to create the instruments on (default: the global MeterProvider's
            meter named ``optimizely_odp_ext``).

    The callbacks run on the reader's thread at each collection; one ``odp_stats()`` per
    client serves every instrument of that collection. Thread-safe.
    """

    def __init__(self, meter: Meter | None = None) -> None:
        from optimizely_odp_ext import __version__

        self.meter = meter if meter is not None else otel_metrics.get_meter(METER_NAME, __version__)
        self._sources = Sources()
        self._lock = threading.Lock()
        self._snapshot: dict[MetricSpec, list[tuple[str, Reading]]] | None = None
        self._observed: set[MetricSpec] = set()
        for spec in ALL:
            create = self._creator(spec)
            create(spec.otel_name, callbacks=[self._callback(spec)], unit=spec.unit.otel,
                   description=spec.description)

    def add(self, client: StatsSource, name: str = DEFAULT_NAME) -> None:
        """Report ``client`` with the attribute ``odp.client=name``. Non-blocking; thread-safe.

        Raises:
            ValueError: another client already has ``name``, or ``name`` is not 1-64
                letters, digits or ``_.:/-``.
        """
        self._sources.add(client, name)

    def remove(self, name: str = DEFAULT_NAME) -> bool:
        """Stop reporting the client named ``name``; True if there was one. Thread-safe."""
        return self._sources.remove(name)

    def _creator(self, spec: MetricSpec) -> Callable[..., Any]:
        if spec.kind is Kind.COUNTER:
            return self.meter.create_observable_counter
        if spec in _NOT_ADDITIVE:
            return self.meter.create_observable_gauge
        return self.meter.create_observable_up_down_counter

    def _callback(self, spec: MetricSpec) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(reading.value, {ATTRIBUTES["client"]: client,
                                            **{ATTRIBUTES[label]: value for label, value in reading.labels}})
                for client, reading in self._readings(spec)
            ]

        return observe

    def _readings(self, spec: MetricSpec) -> list[tuple[str, Reading]]:
        """This collection's readings of ``spec``. A fresh snapshot is taken when an
        instrument asks a second time, i.e. once per collection, whatever the order in which
        the SDK calls the callbacks."""
        with self._lock:
            if self._snapshot is None or spec in self._observed:
                snapshot: dict[MetricSpec, list[tuple[str, Reading]]] = {}
                for client, readings in self._sources.readings():
                    for reading in readings:
                        snapshot.setdefault(reading.spec, []).append((client, reading))
                self._snapshot, self._observed = snapshot, set()
            self._observed.add(spec)
            return self._snapshot.get(spec, [])


_per_meter: weakref.WeakKeyDictionary[Any, OdpMeterInstruments] = weakref.WeakKeyDictionary()
_default: list[OdpMeterInstruments] = []
_lock = threading.Lock()


def instrument(client: StatsSource, *, name: str = DEFAULT_NAME, meter: Meter | None = None) -> OdpMeterInstruments:
    """Report ``client``'s ``odp_stats()`` through observable instruments on ``meter``
    (default: the global MeterProvider's ``optimizely_odp_ext`` meter), with the attribute
    ``odp.client=name``. Clients on the same meter share one set of instruments.

    The client stays reported (and referenced) until ``uninstrument(name)``.
    Non-blocking; thread-safe.

    Raises:
        ValueError: another client is already reported on ``meter`` as ``name``.
    """
    with _lock:
        instruments = _instruments_for(meter)
        if instruments is None:
            instruments = OdpMeterInstruments(meter)
            if meter is None:
                _default.append(instruments)
            else:
                _per_meter[meter] = instruments
    instruments.add(client, name)
    return instruments


def uninstrument(name: str = DEFAULT_NAME, *, meter: Meter | None = None) -> bool:
    """Stop reporting the client reported as ``name`` on ``meter``; True if there was one.
    The instruments stay (OpenTelemetry cannot remove them) and report nothing for it."""
    with _lock:
        instruments = _instruments_for(meter)
    return instruments is not None and instruments.remove(name)


def _instruments_for(meter: Meter | None) -> OdpMeterInstruments | None:
    if meter is None:
        return _default[0] if _default else None
    return _per_meter.get(meter)
