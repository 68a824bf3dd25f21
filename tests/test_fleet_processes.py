"""A fleet of real processes on one Redis stream (a real redis-server, the fixture's) delivering to
the loopback collector: kills, Redis restarts and outages, relays. Each process is a ``python -c``
script (or the ``optimizely-odp relay`` command) that reports on stdout; every wait is bounded.

What these tests can honestly show about Redis itself: a restart by ``SHUTDOWN`` and a crash of
the Redis *process* keep every append Redis acknowledged (AOF ``everysec`` writes it to the page
cache before the reply). The loss of the Redis *host* (up to the last second of appends) is not
simulated here.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import API_KEY
from scripted import (
    Processes,
    ledger_balances,
    pending_by_pid,
    pending_count,
    stream_length,
    users,
    wait_until,
)

from optimizely_odp_ext.testing import OdpCollector, sample_datafile
from optimizely_odp_ext.testing.redis_server import RedisServer

STREAM = "optimizely-odp:events"
STORE_CHUNK = 100
"""Events one append stores (fleet.STORE_CHUNK): the most an ambiguous append can duplicate."""


@pytest.fixture
def processes(collector: OdpCollector, redis_server: RedisServer) -> Iterator[Processes]:
    started = Processes(json.dumps(sample_datafile(collector.url, API_KEY)), redis_server.url)
    yield started
    started.stop_all()


MEMBER = """
    # A member of the fleet: sends ARGS[1] events tagged ARGS[0], reports once they are all in
    # Redis, then on "flush" flushes and closes, reporting its counters.
    tag, count, claim_after = ARGS[0], int(ARGS[1]), float(ARGS[2])
    c = client(claim_after=claim_after)
    flush = told("flush")
    for i in range(count):
        assert c.send_odp_event("fleet", {"fs_user_id": f"{tag}-{i}"})
    wait_for(lambda: c.odp_stats()["spooled"] == count)
    say("appended", json.dumps(c.odp_stats()))
    flush.wait(60)
    flushed = c.flush(60)
    c.close(10)
    say("closed", json.dumps(dict(c.odp_stats(), flushed=flushed)))
"""


def test_a_member_killed_during_an_outage_loses_nothing_a_survivor_delivers_all_after_claim_after(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    collector.respond_with(503)  # ODP is down: every member claims events and keeps retrying them
    # claim_after 3 s (touched every 1 s): 1 s is too tight here, where keeping 5,000 claims (two
    # round trips, ~40 us an id in redis-py) takes 0.3-0.7 s on a busy 2-core machine.
    victim = processes.script(MEMBER, "victim", "6000", "3")
    survivor = processes.script(MEMBER, "survivor", "4000", "3")
    victim.expect("appended")
    survivor.expect("appended")
    wait_until(lambda: pending_count(redis_server) == 10_000 and pending_by_pid(redis_server).get(victim.pid),
               message="all 10,000 events claimed, some by the victim")
    assert collector.wait_for_requests(4), "both tried ODP (and were refused)"

    victim.process.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    collector.reset_faults()
    assert collector.wait_for_events(10_000, timeout=30), f"{collector.event_count()} of 10,000 delivered"
    survivor.tell("flush")
    stats = survivor.expect_json("closed")

    assert users(collector) == Counter([f"victim-{i}" for i in range(6000)] + [f"survivor-{i}" for i in range(4000)])
    assert collector.duplicates() == {}, "nothing was in flight with success: no duplicates"
    assert stats["flushed"] and stats["delivered"] == 10_000 and stats["claimed"] == 10_000
    assert ledger_balances(stats)
    assert stream_length(redis_server) == 0 and pending_count(redis_server) == 0


STEADY = """
    # Sends events at a steady pace until told "stop", saying how many every 500; then flushes.
    c = client(claim_after=2.0)
    stop = told("stop")
    sent = 0
    while not stop.is_set():
        for _ in range(25):
            assert c.send_odp_event("fleet", {"fs_user_id": f"steady-{sent}"})
            sent += 1
        if sent % 500 == 0:
            say("sent", sent, c.odp_stats()["spool"]["state"])
        time.sleep(0.01)
    flushed = c.flush(60)
    c.close(10)
    say("done", json.dumps(dict(c.odp_stats(), sent=sent, flushed=flushed)))
"""


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_redis_restarted_or_crashed_mid_run_loses_nothing_it_acknowledged(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer, how: str) -> None:
    member = processes.script(STEADY)
    member.expect("sent 1000")
    if how == "restart":
        redis_server.restart()  # SHUTDOWN: the AOF is written and fsynced, then the same port and data
    else:
        redis_server.kill()  # SIGKILL: what Redis acknowledged is in the AOF (the page cache)
        redis_server.start()
    member.expect("sent 3000")  # it kept sending through the restart, and after
    member.tell("stop")
    stats = member.expect_json("done", timeout=60)

    sent = stats["sent"]
    assert stats["flushed"], "every event appended and delivered once Redis was back"
    arrived = users(collector)
    assert set(arrived) == {f"steady-{i}" for i in range(sent)}, "0 lost"
    # An append whose connection broke after Redis executed it (the reply lost) is appended again:
    # a duplicate with the same idempotence id, at most one append's worth.
    assert sum(arrived.values()) - sent <= STORE_CHUNK and set(collector.duplicates().values()) <= {2}
    assert ledger_balances(stats) and stats["dropped_total"] == 0
    assert stream_length(redis_server) == 0


def test_four_members_under_latency_deliver_each_event_exactly_once(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    per_member = 10_000  # the issue says 25k each; 10k keeps this test near 10 s on a shared 2-core machine
    collector.set_delay(0.05)
    members = [processes.script(MEMBER, f"m{n}", str(per_member), "10") for n in range(4)]
    for member in members:
        member.expect("appended", timeout=60)
    for member in members:
        member.tell("flush")
    stats = [member.expect_json("closed", timeout=60) for member in members]

    expected = Counter(f"m{n}-{i}" for n in range(4) for i in range(per_member))
    assert users(collector) == expected and collector.duplicates() == {}
    assert all(s["flushed"] and ledger_balances(s) for s in stats)
    assert sum(s["delivered"] for s in stats) == 4 * per_member
    assert sum(s["claimed"] - s["released"] for s in stats) == 4 * per_member, "claims handed back at close"
    assert stream_length(redis_server) == 0


PACED = """
    # Sends 20 events every 10 ms until told "stop", timing every call; every 500 it says how
    # many and the spool's state. Then flushes and reports.
    c = client(claim_after=2.0)
    stop = told("stop")
    sent, slowest = 0, 0.0
    while not stop.is_set():
        for _ in range(20):
            began = time.perf_counter()
            result = c.send_odp_event("fleet", {"fs_user_id": f"paced-{sent}"})
            slowest = max(slowest, time.perf_counter() - began)
            assert result, result.reason
            sent += 1
        if sent % 500 == 0:
            say("sent", sent, c.odp_stats()["spool"]["state"])
        time.sleep(0.01)
    flushed = c.flush(60)
    c.close(10)
    say("done", json.dumps(dict(c.odp_stats(), sent=sent, slowest=slowest, flushed=flushed)))
"""


def test_redis_down_at_start_and_mid_run_the_app_keeps_working_and_every_event_arrives(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    redis_server.stop()  # unreachable at start
    member = processes.script(PACED)
    assert member.expect("sent 500") == "failing"
    member.expect("sent 1000")
    redis_server.start()
    wait_until(lambda: member.expect("sent").endswith(" ok"), message="the spool works again")
    redis_server.stop()  # unreachable mid-run, while the app sends about 2,000 events/s
    wait_until(lambda: member.expect("sent").endswith(" failing"))
    for _ in range(5):  # about 2.5 s of outage (the 10 s, shortened: the behaviour is the same)
        assert member.expect("sent").endswith(" failing")
    redis_server.start()
    wait_until(lambda: member.expect("sent").endswith(" ok"))
    member.tell("stop")
    stats = member.expect_json("done", timeout=60)

    assert stats["flushed"] and stats["dropped_total"] == 0 and ledger_balances(stats)
    assert stats["slowest"] < 1.0, "send_odp_event never waited for Redis (its calls wait up to 5 s)"
    arrived = users(collector)
    assert set(arrived) == {f"paced-{i}" for i in range(stats["sent"])}, "every event arrived"
    # A stop (SHUTDOWN) can close the connection after Redis executed an append but before its
    # reply went out: that group is appended again, a duplicate with the same idempotence ids.
    assert sum(arrived.values()) - stats["sent"] <= 2 * STORE_CHUNK and set(collector.duplicates().values()) <= {2}


PRODUCER = """
    # A producer only (deliver=False, like a Lambda): appends ARGS[1] events, flushes (= appended), exits.
    c = client(deliver=False)
    tag, count = ARGS[0], int(ARGS[1])
    for i in range(count):
        assert c.send_odp_event("fleet", {"fs_user_id": f"{tag}-{i}"})
    flushed = c.flush(30)
    c.close(10)
    say("done", json.dumps(dict(c.odp_stats(), flushed=flushed)))
"""


EVENTS = 12_000


def relay_status(process: object) -> list[str]:
    return [line for line in getattr(process, "stderr", []) if "relay: delivered" in line]


def test_a_producer_only_process_and_two_relays_deliver_each_event_once_and_sigterm_drains(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    collector.set_delay(0.05)  # requests take a while: a relay stopped mid-run has some under way
    options = ("--claim-after", "6", "--status-every", "0.3", "--drain-timeout", "10")
    relays = [processes.command("relay", redis_server.url, "--consumer", f"relay-{n}", *options) for n in (1, 2)]
    producer = processes.script(PRODUCER, "produced", str(EVENTS))
    stats = producer.expect_json("done", timeout=60)
    assert producer.wait(10) == 0 and stats["flushed"] and stats["spooled"] == EVENTS
    assert stats["claimed"] == 0 and stats["delivered"] == 0, "a producer only appends"

    assert collector.wait_for_events(2_000, timeout=30)
    first, second = relays
    wait_until(lambda: relay_status(first), message="a status line every 0.3 s")  # 2,000 can arrive sooner
    first.process.send_signal(signal.SIGTERM)  # mid-run: it finishes its requests, hands back the rest
    assert first.wait(20) == 0, first.stderr
    left = redis_server.execute("XPENDING", STREAM, "optimizely-odp", "-", "+", "100000", "relay-1")
    assert all(idle > 86_400_000 for _, _, idle, _ in left), "what it still lists is handed back (idle for years)"
    assert collector.wait_for_events(EVENTS, timeout=30), f"{collector.event_count()} of {EVENTS:,} delivered"
    wait_until(lambda: relay_status(second), message="a status line every 0.3 s")
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, second.stderr

    assert users(collector) == Counter(f"produced-{i}" for i in range(EVENTS))
    assert collector.duplicates() == {}, "a graceful stop finishes its requests before it hands back"
    assert stream_length(redis_server) == 0 and pending_count(redis_server) == 0
    for relay in relays:
        assert any(line.startswith("optimizely-odp: relay: delivering from redis://") for line in relay.stderr)
        assert relay_status(relay), f"periodic status lines: {relay.stderr}"
        assert "SIGTERM received: draining" in "\n".join(relay.stderr)
        assert relay.stderr[-1].startswith("optimizely-odp: relay: stopped; delivered ")
        # (close() logs what it handed back at ERROR: "closed with N events undelivered ...; N claimed
        # ones were handed back to the fleet"; nothing else may be an error.)
        errors = [line for line in relay.stderr if (" ERROR " in line and "handed back to the fleet" not in line)
                  or "Traceback" in line]
        assert not errors, relay.stderr
    assert "spool ok" in relay_status(first)[-1] and "stream: " in relay_status(first)[-1]


WRITER = """
    # Appends at a steady pace (producer only) and, every 50 events, prints how many it accepted
    # and how many are in Redis (stats()["spooled"]: appends are in order, so the first that many).
    c = client(deliver=False)
    accepted = 0
    while True:
        for _ in range(50):
            assert c.send_odp_event("fleet", {"fs_user_id": f"w-{accepted}"})
            accepted += 1
        say("progress", accepted, c.odp_stats()["spooled"])
        time.sleep(0.005)
"""


def test_every_event_reported_appended_before_a_kill_is_delivered(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    writer = processes.script(WRITER)
    reported = 0
    while reported < 3000:
        reported = int(writer.expect("progress").split()[1])
    writer.process.send_signal(signal.SIGKILL)
    assert writer.wait(10) == -signal.SIGKILL
    last = [line.split()[1:] for line in writer.stdout if line.startswith("progress")][-1]
    accepted_at_kill, appended_at_kill = int(last[0]), int(last[1])

    relay = processes.command("relay", redis_server.url, "--claim-after", "1")
    in_redis = wait_until(lambda: stream_length(redis_server) == 0 and collector.event_count(), timeout=30)
    relay.process.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0, relay.stderr

    arrived = users(collector)
    assert in_redis and set(arrived) >= {f"w-{i}" for i in range(appended_at_kill)}, "none it reported is lost"
    assert set(arrived) <= {f"w-{i}" for i in range(accepted_at_kill + 1000)}
    assert collector.duplicates() == {}
