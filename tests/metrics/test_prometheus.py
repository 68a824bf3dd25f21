"""The Prometheus collector, read the way Prometheus reads it: the text exposition, parsed."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import API_KEY, ClientFactory
from metrics_helpers import FULL_CONTRACT_STATS, StatsDict, client_with_history

from optimizely_odp_ext import BatchEventManager
from optimizely_odp_ext.testing import OdpCollector

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from optimizely_odp_ext.metrics import prometheus  # noqa: E402

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """(sample name and labels -> value, family name -> type) of a text exposition."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def scrape(registry: CollectorRegistry) -> tuple[Samples, dict[str, str]]:
    return parse(generate_latest(registry).decode())


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_a_scrape_over_http_reports_what_a_client_really_delivered(make_client: ClientFactory,
                                                                  collector: OdpCollector) -> None:
    client = client_with_history(make_client, collector)
    registry = CollectorRegistry()
    prometheus.register(client, registry=registry)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        response = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
        thread.join(10)
    assert response.status_code == 200
    samples, types = parse(response.text)
    me = labels(client="default")
    assert samples[("odp_events_accepted_total", me)] == 3
    assert samples[("odp_events_delivered_total", me)] == 2
    assert samples[("odp_events_dropped_total", labels(client="default", reason="rejectedByServer"))] == 1
    assert samples[("odp_events_queued", me)] == 0
    assert samples[("odp_events_in_flight", me)] == 0
    assert samples[("odp_events_held_for_datafile", me)] == 0
    assert samples[("odp_requests_total", me)] >= 2  # the poison batch is split before it is dropped
    assert samples[("odp_batches_sent_total", me)] >= 1
    assert types["odp_events_accepted"] == "counter" and types["odp_events_queued"] == "gauge"
    assert types["odp_events_queued_bytes"] == "gauge"
    stats = client.odp_stats()
    if "refused" in stats:  # the client counts refusals at send (odp_stats contract)
        assert samples[("odp_events_refused_total", labels(client="default", reason="invalidAction"))] == 1
    host = labels(client="default", host=collector.url)
    assert samples[("odp_destination_events_delivered_total", host)] == 2
    assert samples[("odp_destination_events_dropped_total", host)] == 1
    assert API_KEY not in response.text, "the destination host is a label; its key never is"
    assert all(f'host="{collector.url}"' in line for line in response.text.splitlines()
               if collector.url in line), "the host appears as the host label only"


def test_every_number_a_client_reports_is_exposed_unchanged(make_client: ClientFactory,
                                                            collector: OdpCollector) -> None:
    client = client_with_history(make_client, collector)
    registry = CollectorRegistry()
    prometheus.register(client, registry=registry)
    samples, _ = scrape(registry)
    stats = client.odp_stats()
    expected = {"accepted": "odp_events_accepted_total", "delivered": "odp_events_delivered_total",
                "requests": "odp_requests_total", "batches_sent": "odp_batches_sent_total",
                "retries": "odp_request_retries_total", "queued": "odp_events_queued",
                "queued_bytes": "odp_events_queued_bytes", "in_flight": "odp_events_in_flight",
                "held_for_datafile": "odp_events_held_for_datafile"}
    for key, name in expected.items():
        if key in stats:
            assert samples[(name, labels(client="default"))] == stats[key], key
        else:
            assert not [s for s in samples if s[0] == name], f"{key} is absent, so is {name}"
    for reason, count in stats["dropped"].items():
        assert samples[("odp_events_dropped_total", labels(client="default", reason=reason))] == count


def test_every_key_of_the_stats_contract_becomes_a_sample() -> None:
    registry = CollectorRegistry()
    source = StatsDict(FULL_CONTRACT_STATS)
    prometheus.register(source, registry=registry)
    samples, types = scrape(registry)
    c, host = "default", "https://api.zaius.com"
    assert samples == {
        ("odp_events_accepted_total", labels(client=c)): 120,
        ("odp_events_delivered_total", labels(client=c)): 100,
        ("odp_requests_total", labels(client=c)): 9,
        ("odp_batches_sent_total", labels(client=c)): 7,
        ("odp_request_retries_total", labels(client=c)): 2,
        ("odp_events_queued", labels(client=c)): 10,
        ("odp_events_queued_bytes", labels(client=c)): 3000,
        ("odp_events_in_flight", labels(client=c)): 5,
        ("odp_events_held_for_datafile", labels(client=c)): 0,
        ("odp_events_recovered_total", labels(client=c)): 6,
        ("odp_events_spooled_total", labels(client=c)): 0,
        ("odp_events_claimed_total", labels(client=c)): 0,
        ("odp_events_released_total", labels(client=c)): 0,
        ("odp_events_lost_claims_total", labels(client=c)): 0,
        ("odp_events_waiting_to_store", labels(client=c)): 0,
        ("odp_events_dropped_total", labels(client=c, reason="expired")): 3,
        ("odp_events_dropped_total", labels(client=c, reason="rejectedByServer")): 2,
        ("odp_events_refused_total", labels(client=c, reason="invalidData")): 4,
        ("odp_events_refused_total", labels(client=c, reason="queueFull")): 1,
        ("odp_spool_info", labels(client=c, kind="sqlite", state="ok")): 1,
        ("odp_spool_events", labels(client=c)): 15,
        ("odp_spool_bytes", labels(client=c)): 4500,
        ("odp_spool_pending_events", labels(client=c)): 5,
        ("odp_spool_oldest_event_timestamp_seconds", labels(client=c)): 1700000000.5,
        ("odp_destination_events_delivered_total", labels(client=c, host=host)): 100,
        ("odp_destination_events_dropped_total", labels(client=c, host=host)): 5,
        ("odp_destination_requests_total", labels(client=c, host=host)): 9,
        ("odp_destination_request_retries_total", labels(client=c, host=host)): 2,
        ("odp_destination_events_queued", labels(client=c, host=host)): 10,
        ("odp_destination_events_in_flight", labels(client=c, host=host)): 5,
    }
    assert types["odp_spool_bytes"] == "gauge" and types["odp_request_retries"] == "counter"
    assert source.calls == 1, "one odp_stats() per scrape"
    assert "/var/tmp/odp.sqlite" not in generate_latest(registry).decode(), "the spool's description is no label"


@pytest.mark.parametrize("stats", [
    {},
    {"accepted": "12", "queued": None, "in_flight": True, "dropped": ["expired"], "refused": None,
     "spool": "sqlite", "destinations": {"h": 3}},
    {"dropped": {"expired": "many"}, "spool": {"events": "x"}},
], ids=["empty", "wrong types", "wrong nested types"])
def test_absent_or_malformed_keys_give_no_sample_and_no_error(stats: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    source = StatsDict(stats)
    prometheus.register(source, registry=registry)
    samples, _ = scrape(registry)
    assert {name for name, _ in samples} <= {"odp_spool_info"}
    assert source.calls == 1


def test_several_clients_share_the_names_and_differ_by_the_client_label() -> None:
    registry = CollectorRegistry()
    web, backfill = StatsDict({"accepted": 5}), StatsDict({"accepted": 7})
    first = prometheus.register(web, name="web", registry=registry)
    second = prometheus.register(backfill, name="backfill", registry=registry)
    assert first is second, "one collector per registry"
    samples, _ = scrape(registry)
    assert samples[("odp_events_accepted_total", labels(client="web"))] == 5
    assert samples[("odp_events_accepted_total", labels(client="backfill"))] == 7
    prometheus.register(web, name="web", registry=registry)  # the same client again: no change
    with pytest.raises(ValueError, match="already reported as 'web'"):
        prometheus.register(StatsDict({}), name="web", registry=registry)
    with pytest.raises(ValueError, match="letters, digits"):
        prometheus.register(StatsDict({}), name='a"b', registry=registry)
    with pytest.raises(TypeError, match="odp_stats"):
        prometheus.register(object(), registry=registry)  # type: ignore[arg-type]
    assert prometheus.unregister("web", registry=registry)
    assert not prometheus.unregister("web", registry=registry)
    samples, _ = scrape(registry)
    assert [labels for name, labels in samples if name == "odp_events_accepted_total"] == [labels(client="backfill")]


def test_a_client_stays_reported_until_unregistered_even_when_the_caller_drops_it() -> None:
    registry = CollectorRegistry()
    prometheus.register(StatsDict({"accepted": 1}), name="kept", registry=registry)
    gc.collect()
    samples, _ = scrape(registry)
    assert samples == {("odp_events_accepted_total", labels(client="kept")): 1}, "metrics never vanish silently"
    assert prometheus.unregister("kept", registry=registry)
    assert scrape(registry)[0] == {}
    prometheus.register(StatsDict({"accepted": 2}), name="kept", registry=registry)  # the name is free again


def test_a_collector_of_its_own_registers_with_the_registry_and_clashes_with_a_second() -> None:
    registry = CollectorRegistry(auto_describe=True)
    source = StatsDict({"accepted": 4})
    collector = prometheus.OdpMetricsCollector(registry)
    assert source.calls == 0, "registering does not read the stats"
    collector.add(source, "mine")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        prometheus.OdpMetricsCollector(registry)
    samples, _ = scrape(registry)
    assert samples == {("odp_events_accepted_total", labels(client="mine")): 4}


def test_a_failing_client_is_left_out_and_logged_once_while_the_others_are_scraped(
        make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    broken = make_client()

    def failing_stats() -> dict[str, Any]:
        return {"accepted": 1 // 0}

    broken.odp_stats = failing_stats  # type: ignore[method-assign]
    registry = CollectorRegistry()
    prometheus.register(client, name="ok", registry=registry)
    prometheus.register(broken, name="broken", registry=registry)
    for _ in range(3):
        samples, _ = scrape(registry)
        assert {dict(labels)["client"] for _, labels in samples} == {"ok"}
    failures = [r.getMessage() for r in caplog.records if "left out of the metrics" in r.getMessage()]
    assert failures == ["ODP metrics: odp_stats() of client 'broken' failed and is left out of the metrics: "
                        "ZeroDivisionError: integer division or modulo by zero"]


def test_a_client_with_a_spool_reports_its_kind_and_state_but_not_its_path(make_client: ClientFactory,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "odp-spool.sqlite"
    client = make_client(odp_event_manager=BatchEventManager(spool_path=str(path)))
    assert client.send_odp_event("purchase", {"fs_user_id": "u1"})
    assert client.flush(timeout=10)
    if "spool" not in client.odp_stats():
        pytest.skip("this event manager does not report its spool")
    registry = CollectorRegistry()
    prometheus.register(client, registry=registry)
    text = generate_latest(registry).decode()
    samples, _ = parse(text)
    assert samples[("odp_spool_info", labels(client="default", kind="sqlite", state="ok"))] == 1
    assert samples[("odp_events_delivered_total", labels(client="default"))] == 1
    assert str(path) not in text and "odp-spool" not in text
