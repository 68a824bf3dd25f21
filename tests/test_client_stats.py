"""``odp_stats()`` means what the README's table says, key by key."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ClientFactory

from optimizely_odp_ext import DiscardReason
from optimizely_odp_ext.client import STATS_KEYS
from optimizely_odp_ext.testing import OdpCollector, sample_datafile

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _readme_stats_section() -> str:
    return README.split("### `odp_stats()`", 1)[1].split("\n#", 1)[0]


def _readme_table_keys() -> list[str]:
    return re.findall(r"^\| `([a-z_]+)` \|", _readme_stats_section(), flags=re.MULTILINE)


def test_the_readme_table_lists_exactly_the_keys_odp_stats_has(make_client: ClientFactory) -> None:
    documented = _readme_table_keys()
    assert documented == [*STATS_KEYS, "spool"]
    stats = make_client().odp_stats()
    assert set(STATS_KEYS) <= set(stats)
    section = _readme_stats_section()
    for key in set(stats) - set(STATS_KEYS):
        assert f"`{key}`" in section, f"odp_stats() key {key!r} is not documented"


def test_every_falsy_result_is_counted_by_reason_and_accepted_calls_too(make_client: ClientFactory,
                                                                        collector: OdpCollector) -> None:
    client = make_client()
    assert client.send_odp_event("ok", {"fs_user_id": "u"})
    assert not client.send_odp_event("", {"fs_user_id": "u"})
    assert not client.send_odp_event("a", {})
    assert not client.send_odp_event("a", {"fs_user_id": "u"}, data={"x": float("nan")})
    not_integrated = make_client(datafile=json.dumps(sample_datafile()))
    assert not not_integrated.send_odp_event("a", {"fs_user_id": "u"})
    assert client.flush(10)
    client.close()
    assert not client.send_odp_event("late", {"fs_user_id": "u"})

    stats = client.odp_stats()
    assert stats["accepted"] == 1 and stats["delivered"] == 1
    assert stats["refused"] == {"invalidAction": 1, "invalidIdentifiers": 1, "invalidData": 1, "closed": 1}
    assert stats["refused_total"] == 4
    assert not_integrated.odp_stats()["refused"] == {DiscardReason.ODP_NOT_INTEGRATED.value: 1}


def test_the_invariant_holds_when_nothing_is_moving(make_client: ClientFactory, collector: OdpCollector) -> None:
    client = make_client()
    collector.reject_events(lambda event: event["action"] == "poison")
    for i in range(20):
        assert client.send_odp_event("poison" if i % 5 == 0 else "fine", {"fs_user_id": str(i)})
    assert not client.send_odp_event("", {"fs_user_id": "u"})
    assert client.flush(10)
    stats = client.odp_stats()
    assert stats["accepted"] == 20 and stats["delivered"] == 16
    assert stats["dropped"] == {"rejectedByServer": 4}
    assert stats["accepted"] == (stats["delivered"] + stats["dropped_total"] + stats["queued"] + stats["in_flight"]
                                 + stats["held_for_datafile"])
    assert stats["refused_total"] == 1
