"""The OpenTelemetry instruments, read through the SDK's InMemoryMetricReader."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import API_KEY, ClientFactory
from metrics_helpers import FULL_CONTRACT_STATS, CountingSource, StatsDict, client_with_history

from optimizely_odp_ext.testing import OdpCollector

pytest.importorskip("opentelemetry.metrics")
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    Gauge,
    InMemoryMetricReader,
    Sum,
)

from optimizely_odp_ext.metrics import otel  # noqa: E402

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


class Reader:
    """A MeterProvider with an in-memory reader, and the points of each collection."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = sdk_metrics.MeterProvider(metric_readers=[self.reader])
        self.meter = self.provider.get_meter("tests")
        self.kinds: dict[str, tuple[str, bool | None, str]] = {}

    def points(self) -> Points:
        result: Points = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                if scope.scope.name != "tests":
                    continue  # e.g. the SDK's own metrics (otel.sdk.*), which some versions report
                for metric in scope.metrics:
                    monotonic = metric.data.is_monotonic if isinstance(metric.data, Sum) else None
                    self.kinds[metric.name] = (type(metric.data).__name__, monotonic, metric.unit or "")
                    assert isinstance(metric.data, (Sum, Gauge))
                    for point in metric.data.data_points:
                        result[(metric.name, frozenset((point.attributes or {}).items()))] = point.value
        return result


@pytest.fixture
def otel_reader() -> Any:
    reader = Reader()
    yield reader
    reader.provider.shutdown()


def attrs(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset((otel.ATTRIBUTES[k], v) for k, v in values.items())


def test_the_reader_sees_what_a_client_really_delivered(make_client: ClientFactory, collector: OdpCollector,
                                                        otel_reader: Reader) -> None:
    client = client_with_history(make_client, collector)
    otel.instrument(client, meter=otel_reader.meter)
    points = otel_reader.points()
    me = attrs(client="default")
    assert points[("odp.events.accepted", me)] == 3
    assert points[("odp.events.delivered", me)] == 2
    assert points[("odp.events.dropped", attrs(client="default", reason="rejectedByServer"))] == 1
    assert points[("odp.events.queued", me)] == 0
    assert points[("odp.events.in_flight", me)] == 0
    assert points[("odp.requests", me)] >= 2
    assert otel_reader.kinds["odp.events.accepted"] == ("Sum", True, "{event}")
    assert otel_reader.kinds["odp.events.queued"] == ("Sum", False, "{event}")
    assert otel_reader.kinds["odp.events.queued.size"] == ("Sum", False, "By")
    assert otel_reader.kinds["odp.requests"] == ("Sum", True, "{request}")
    if "refused" in client.odp_stats():
        assert points[("odp.events.refused", attrs(client="default", reason="invalidAction"))] == 1
    assert points[("odp.destination.events.delivered", attrs(client="default", host=collector.url))] == 2
    assert not [key for key in points if API_KEY in str(key)], "the destination host is an attribute; the key never"


def test_each_collection_reads_fresh_stats_once_per_client(make_client: ClientFactory, collector: OdpCollector,
                                                           otel_reader: Reader) -> None:
    client = make_client()
    counted = CountingSource(client)
    otel.instrument(counted, meter=otel_reader.meter)
    assert otel_reader.points()[("odp.events.accepted", attrs(client="default"))] == 0
    assert counted.calls == 1
    for user in ("a", "b"):
        assert client.send_odp_event("viewed", {"fs_user_id": user})
    assert client.flush(timeout=10)
    points = otel_reader.points()
    assert points[("odp.events.accepted", attrs(client="default"))] == 2
    assert points[("odp.events.delivered", attrs(client="default"))] == 2
    assert counted.calls == 2, "one odp_stats() per collection, whatever the number of instruments"


def test_every_key_of_the_stats_contract_becomes_a_point(otel_reader: Reader) -> None:
    otel.instrument(StatsDict(FULL_CONTRACT_STATS), meter=otel_reader.meter)
    points = otel_reader.points()
    c, host = "default", "https://api.zaius.com"
    assert points == {
        ("odp.events.accepted", attrs(client=c)): 120,
        ("odp.events.delivered", attrs(client=c)): 100,
        ("odp.requests", attrs(client=c)): 9,
        ("odp.batches.sent", attrs(client=c)): 7,
        ("odp.request.retries", attrs(client=c)): 2,
        ("odp.events.queued", attrs(client=c)): 10,
        ("odp.events.queued.size", attrs(client=c)): 3000,
        ("odp.events.in_flight", attrs(client=c)): 5,
        ("odp.events.held_for_datafile", attrs(client=c)): 0,
        ("odp.events.recovered", attrs(client=c)): 6,
        ("odp.events.spooled", attrs(client=c)): 0,
        ("odp.events.claimed", attrs(client=c)): 0,
        ("odp.events.released", attrs(client=c)): 0,
        ("odp.events.lost_claims", attrs(client=c)): 0,
        ("odp.events.waiting_to_store", attrs(client=c)): 0,
        ("odp.events.dropped", attrs(client=c, reason="expired")): 3,
        ("odp.events.dropped", attrs(client=c, reason="rejectedByServer")): 2,
        ("odp.events.refused", attrs(client=c, reason="invalidData")): 4,
        ("odp.events.refused", attrs(client=c, reason="queueFull")): 1,
        ("odp.spool.info", attrs(client=c, kind="sqlite", state="ok")): 1,
        ("odp.spool.events", attrs(client=c)): 15,
        ("odp.spool.size", attrs(client=c)): 4500,
        ("odp.spool.pending", attrs(client=c)): 5,
        ("odp.spool.oldest_event.timestamp", attrs(client=c)): 1700000000.5,
        ("odp.destination.events.delivered", attrs(client=c, host=host)): 100,
        ("odp.destination.events.dropped", attrs(client=c, host=host)): 5,
        ("odp.destination.requests", attrs(client=c, host=host)): 9,
        ("odp.destination.request.retries", attrs(client=c, host=host)): 2,
        ("odp.destination.events.queued", attrs(client=c, host=host)): 10,
        ("odp.destination.events.in_flight", attrs(client=c, host=host)): 5,
    }
    assert otel_reader.kinds["odp.spool.info"][0] == "Gauge"
    assert otel_reader.kinds["odp.spool.oldest_event.timestamp"] == ("Gauge", None, "s")
    assert otel_reader.kinds["odp.request.retries"] == ("Sum", True, "{request}")


def test_absent_keys_give_no_point(otel_reader: Reader) -> None:
    otel.instrument(StatsDict({"accepted": 1}), meter=otel_reader.meter)
    assert otel_reader.points() == {("odp.events.accepted", attrs(client="default")): 1}


def test_several_clients_share_the_instruments_and_differ_by_attribute(otel_reader: Reader) -> None:
    web, backfill = StatsDict({"queued": 5}), StatsDict({"queued": 7})
    first = otel.instrument(web, name="web", meter=otel_reader.meter)
    assert otel.instrument(backfill, name="backfill", meter=otel_reader.meter) is first
    with pytest.raises(ValueError, match="already reported as 'web'"):
        otel.instrument(StatsDict({}), name="web", meter=otel_reader.meter)
    assert otel_reader.points() == {("odp.events.queued", attrs(client="web")): 5,
                                    ("odp.events.queued", attrs(client="backfill")): 7}
    assert otel.uninstrument("web", meter=otel_reader.meter)
    assert otel_reader.points() == {("odp.events.queued", attrs(client="backfill")): 7}


def test_instruments_on_the_global_meter_provider_without_an_sdk_are_harmless() -> None:
    instruments = otel.instrument(StatsDict({"accepted": 1}), name="no-sdk-configured")
    try:
        assert instruments.meter is not None
    finally:
        assert otel.uninstrument("no-sdk-configured")
