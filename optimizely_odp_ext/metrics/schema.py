"""Which ``odp_stats()`` keys become which metrics: one table for every exporter.

Pure data and one reading function: no metrics library is imported here. Each exporter
(:mod:`~optimizely_odp_ext.metrics.prometheus`, :mod:`~optimizely_odp_ext.metrics.otel`)
turns the :class:`Reading` values of :func:`read_stats` into its own instruments, with the
names, units and label names conventional in its world.

A key that a stats dict does not carry (an older or a custom event manager, no spool)
gives no reading: the metric is simply absent, never zero and never an error. Labels are
never the API key: only a drop or refusal reason, a destination host, a spool's kind and
state, and the client name the user chose.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(Enum):
    """How a value behaves over time."""

    COUNTER = "counter"
    """Only grows (it starts again at 0 when the process restarts)."""
    GAUGE = "gauge"
    """Goes up and down: a current level."""


class Unit(Enum):
    """What a value counts: Prometheus name suffix and UCUM unit for OpenTelemetry."""

    EVENTS = ("", "{event}")
    REQUESTS = ("", "{request}")
    BYTES = ("bytes", "By")
    SECONDS = ("seconds", "s")
    INFO = ("", "1")

    @property
    def prometheus(self) -> str:
        return self.value[0]

    @property
    def otel(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class MetricSpec:
    """One metric and where its value is in ``odp_stats()``.

    Attributes:
        name: The Prometheus name, without ``_total`` or unit suffix (the exporter adds them).
        otel_name: The OpenTelemetry instrument name.
        kind: Counter or gauge.
        unit: What it counts.
        description: One line for ``# HELP`` and the instrument description.
        labels: Label names besides ``client`` (``reason``, ``host``, ``kind``, ``state``).
    """

    name: str
    otel_name: str
    kind: Kind
    unit: Unit
    description: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reading:
    """One value read from a stats dict, with its labels (``client`` not included)."""

    spec: MetricSpec
    labels: tuple[tuple[str, str], ...]
    value: float


def _spec(name: str, otel_name: str, kind: Kind, unit: Unit, description: str,
          *labels: str) -> MetricSpec:
    return MetricSpec(name, otel_name, kind, unit, description, labels)


C, G = Kind.COUNTER, Kind.GAUGE
EV, RQ = Unit.EVENTS, Unit.REQUESTS

ACCEPTED = _spec("odp_events_accepted", "odp.events.accepted", C, EV,
                 "ODP events accepted for delivery (send_odp_event returned a truthy result).")
DELIVERED = _spec("odp_events_delivered", "odp.events.delivered", C, EV,
                  "ODP events acknowledged by ODP (2xx).")
DROPPED = _spec("odp_events_dropped", "odp.events.dropped", C, EV,
                "ODP events accepted and later given up, by reason.", "reason")
REFUSED = _spec("odp_events_refused", "odp.events.refused", C, EV,
                "send_odp_event calls that returned a falsy result, by reason.", "reason")
REQUESTS = _spec("odp_requests", "odp.requests", C, RQ,
                 "HTTP requests made to ODP, whatever their outcome.")
BATCHES_SENT = _spec("odp_batches_sent", "odp.batches.sent", C, RQ,
                     "Requests ODP acknowledged (2xx).")
RETRIES = _spec("odp_request_retries", "odp.request.retries", C, RQ,
                "Failed requests whose events were kept to try again.")
QUEUED = _spec("odp_events_queued", "odp.events.queued", G, EV,
               "Accepted ODP events waiting in the event manager (not in a request).")
QUEUED_BYTES = _spec("odp_events_queued", "odp.events.queued.size", G, Unit.BYTES,
                     "Memory the held ODP events take (queued, retried, in flight), counted against max_queue_bytes.")
IN_FLIGHT = _spec("odp_events_in_flight", "odp.events.in_flight", G, EV,
                  "ODP events in requests under way.")
HELD = _spec("odp_events_held_for_datafile", "odp.events.held_for_datafile", G, EV,
             "ODP events accepted by an sdk_key client before its first datafile.")
# BatchEventManager's own keys (README, "odp_stats()"): a spool read back, and a fleet's shared stream.
RECOVERED = _spec("odp_events_recovered", "odp.events.recovered", C, EV,
                  "ODP events a previous run left in the spool, read back to deliver.")
SPOOLED = _spec("odp_events_spooled", "odp.events.spooled", C, EV,
                "ODP events appended to a shared spool (the fleet's to deliver).")
CLAIMED = _spec("odp_events_claimed", "odp.events.claimed", C, EV,
                "ODP events taken from a shared spool to deliver.")
RELEASED = _spec("odp_events_released", "odp.events.released", C, EV,
                 "Claimed ODP events handed back undelivered at close.")
LOST_CLAIMS = _spec("odp_events_lost_claims", "odp.events.lost_claims", C, EV,
                    "Claimed ODP events another process took over.")
WAITING_TO_STORE = _spec("odp_events_waiting_to_store", "odp.events.waiting_to_store", G, EV,
                         "Accepted ODP events not appended to a shared spool yet.")
SPOOL_INFO = _spec("odp_spool_info", "odp.spool.info", G, Unit.INFO,
                   "1 for the spool in use, labelled with its kind and state.", "kind", "state")
SPOOL_EVENTS = _spec("odp_spool_events", "odp.spool.events", G, EV,
                     "ODP events stored in the spool.")
SPOOL_BYTES = _spec("odp_spool", "odp.spool.size", G, Unit.BYTES,
                    "Bytes of event JSON stored in the spool.")
SPOOL_MEMORY = _spec("odp_spool_memory", "odp.spool.memory", G, Unit.BYTES,
                     "Memory the spool takes in its store (Redis: the stream's MEMORY USAGE, an estimate).")
SPOOL_PENDING = _spec("odp_spool_pending_events", "odp.spool.pending", G, EV,
                      "Spooled ODP events handed out for delivery and not acknowledged yet.")
SPOOL_OLDEST = _spec("odp_spool_oldest_event_timestamp", "odp.spool.oldest_event.timestamp", G,
                     Unit.SECONDS, "When the oldest spooled ODP event was accepted (Unix time).")

# Per destination: only when odp_stats() has a ``destinations`` dict (proposed, see the README).
DEST_DELIVERED = _spec("odp_destination_events_delivered", "odp.destination.events.delivered", C, EV,
                       "ODP events acknowledged, by destination host.", "host")
DEST_DROPPED = _spec("odp_destination_events_dropped", "odp.destination.events.dropped", C, EV,
                     "ODP events given up, by destination host.", "host")
DEST_REQUESTS = _spec("odp_destination_requests", "odp.destination.requests", C, RQ,
                      "HTTP requests made, by destination host.", "host")
DEST_RETRIES = _spec("odp_destination_request_retries", "odp.destination.request.retries", C, RQ,
                     "Failed requests kept to try again, by destination host.", "host")
DEST_QUEUED = _spec("odp_destination_events_queued", "odp.destination.events.queued", G, EV,
                    "ODP events waiting, by destination host.", "host")
DEST_IN_FLIGHT = _spec("odp_destination_events_in_flight", "odp.destination.events.in_flight", G, EV,
                       "ODP events in requests under way, by destination host.", "host")

SCALARS: dict[str, MetricSpec] = {
    "accepted": ACCEPTED,
    "delivered": DELIVERED,
    "requests": REQUESTS,
    "batches_sent": BATCHES_SENT,
    "retries": RETRIES,
    "queued": QUEUED,
    "queued_bytes": QUEUED_BYTES,
    "in_flight": IN_FLIGHT,
    "held_for_datafile": HELD,
    "recovered": RECOVERED,
    "spooled": SPOOLED,
    "claimed": CLAIMED,
    "released": RELEASED,
    "lost_claims": LOST_CLAIMS,
    "waiting_to_store": WAITING_TO_STORE,
}
"""``odp_stats()`` key -> metric, for keys whose value is one number."""

BY_REASON: dict[str, MetricSpec] = {"dropped": DROPPED, "refused": REFUSED}
"""``odp_stats()`` key -> metric, for keys whose value is a dict reason -> count."""

SPOOL_NUMBERS: dict[str, MetricSpec] = {
    "events": SPOOL_EVENTS,
    "bytes": SPOOL_BYTES,
    "memory_bytes": SPOOL_MEMORY,
    "pending": SPOOL_PENDING,
    "oldest_accepted_at": SPOOL_OLDEST,
}
"""Key of the ``spool`` dict -> metric (each only when the store reports it)."""

DESTINATION_NUMBERS: dict[str, MetricSpec] = {
    "delivered": DEST_DELIVERED,
    "dropped_total": DEST_DROPPED,
    "requests": DEST_REQUESTS,
    "retries": DEST_RETRIES,
    "queued": DEST_QUEUED,
    "in_flight": DEST_IN_FLIGHT,
}
"""Key of each ``destinations[host]`` dict -> metric."""

ALL: tuple[MetricSpec, ...] = (
    *SCALARS.values(), *BY_REASON.values(), SPOOL_INFO, *SPOOL_NUMBERS.values(), *DESTINATION_NUMBERS.values(),
)
"""Every metric an exporter may report, in a stable order."""


def read_stats(stats: Mapping[str, Any]) -> Iterator[Reading]:
    """The readings in one ``odp_stats()`` snapshot, in the order of :data:`ALL`.

    Keys that are absent, or whose value is not a number (or not a dict where one is
    expected), are skipped. Never raises for any dict it is given.
    """
    for key, spec in SCALARS.items():
        value = _number(stats.get(key))
        if value is not None:
            yield Reading(spec, (), value)
    for key, spec in BY_REASON.items():
        for reason, count in _items(stats.get(key)):
            value = _number(count)
            if value is not None:
                yield Reading(spec, (("reason", reason),), value)
    spool = stats.get("spool")
    if isinstance(spool, Mapping):
        yield Reading(SPOOL_INFO, (("kind", str(spool.get("kind", ""))), ("state", str(spool.get("state", "")))),
                      1.0)
        for key, spec in SPOOL_NUMBERS.items():
            value = _number(spool.get(key))
            if value is not None:
                yield Reading(spec, (), value)
    for host, figures in _items(stats.get("destinations")):
        if not isinstance(figures, Mapping):
            continue
        for key, spec in DESTINATION_NUMBERS.items():
            value = _number(figures.get(key))
            if value is not None:
                yield Reading(spec, (("host", host),), value)


def _number(value: object) -> float | None:
    """``value`` if it is an int or a float (a bool is not a count), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _items(value: object) -> list[tuple[str, Any]]:
    """The (str key, value) pairs of ``value`` if it is a mapping, else none."""
    if not isinstance(value, Mapping):
        return []
    return [(str(key), item) for key, item in value.items()]
