"""``optimizely-odp relay``, ``spool stats|replay|purge`` on a Redis URL and ``doctor`` with ``spool_url``,
against a real redis-server and the loopback collector; and what the manager tells the relay
(``last_error_kind``) and owes it at close (requests under way finish before the spool closes)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY
from scripted import Processes, environment, pending_count, stream_length, users, wait_until

from optimizely_odp_ext import BatchEventManager
from optimizely_odp_ext.cli import main
from optimizely_odp_ext.event import build_event
from optimizely_odp_ext.managers.lifecycle import NullLogger
from optimizely_odp_ext.spool import SpoolRecord
from optimizely_odp_ext.testing import OdpCollector, sample_datafile
from optimizely_odp_ext.testing.redis_server import RedisServer

STREAM = "optimizely-odp:events"
PASSWORD = "relay-secret-1"


@pytest.fixture
def processes(collector: OdpCollector, redis_server: RedisServer) -> Iterator[Processes]:
    started = Processes(json.dumps(sample_datafile(collector.url, API_KEY)), redis_server.url)
    yield started
    started.stop_all()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPTIMIZELY_ODP_* variable of the environment reaches an in-process command."""
    for name in [n for n in os.environ if n.startswith("OPTIMIZELY_ODP_")]:
        monkeypatch.delenv(name)


def append_events(url: str, collector: OdpCollector, count: int, tag: str = "e", key: str = API_KEY,
                  **spool_options: Any) -> list[str]:
    """``count`` real ODP events in the stream, for the collector (as a producer would append them)."""
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    spool = RedisStreamSpool(url, **spool_options)
    try:
        now = time.time()
        return spool.append([SpoolRecord(collector.url, key, build_event("fleet", {"fs_user_id": f"{tag}-{i}"})
                                         .to_json(), now) for i in range(count)])
    finally:
        spool.close()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- what the manager tells a relay, and owes it at close ------------------------------------------


def member(url: str, **settings: Any) -> BatchEventManager:
    manager = BatchEventManager(spool_url=url, **settings)
    manager.start(logger=NullLogger(), notification_center=None, integration=None)
    return manager


def test_the_spool_state_tells_a_redis_that_is_down_from_one_that_refuses(redis_server: RedisServer) -> None:
    redis_server.execute("ACL", "SETUSER", "appender", "on", f">{PASSWORD}", f"~{STREAM}", "-@all", "+xadd",
                         "+multi", "+exec")
    refused = member(redis_server.url.replace("redis://", f"redis://appender:{PASSWORD}@"))
    try:
        state = wait_until(lambda: refused.stats()["spool"].get("last_error_kind") and refused.stats()["spool"])
        assert state["state"] == "failing" and state["last_error_kind"] == "refused"
        assert "not permitted by the user's ACL" in state["last_error"] and PASSWORD not in str(state)
    finally:
        refused.close(1)
    redis_server.stop()
    down = member(redis_server.url)
    try:
        state = wait_until(lambda: down.stats()["spool"].get("last_error_kind") and down.stats()["spool"])
        assert (state["state"], state["last_error_kind"]) == ("failing", "unavailable")
    finally:
        down.close(0)


def test_close_lets_requests_under_way_finish_before_the_spool_closes(redis_server: RedisServer,
                                                                     collector: OdpCollector) -> None:
    append_events(redis_server.url, collector, 1000)
    collector.set_delay(0.5)
    relay = member(redis_server.url, claim_after=600)
    wait_until(lambda: relay.stats()["in_flight"], message="a request under way, its answer 0.5 s off")
    relay.close(5)
    stats = relay.stats()
    assert stats["in_flight"] == 0 and stats["delivered"] >= 500 and stats["dropped_total"] == 0
    assert stats["delivered"] + stats["released"] == stats["claimed"]
    assert stream_length(redis_server) == 1000 - stats["delivered"], "what ODP acknowledged left the stream"
    collector.reset_faults()
    other = member(redis_server.url, claim_after=600)
    try:
        assert collector.wait_for_events(1000), "the rest was handed back: taken at once"
        assert sorted(users(collector).values()) == [1] * 1000, "and nothing was sent twice"
    finally:
        other.close(5)


# -- the relay command -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    ((), "give the Redis URL"),
    (("http://127.0.0.1:6379",), "spool_url must be a redis://"),
    (("redis://127.0.0.1:6379/0", "--set", "deliver=false"), "--set deliver does not apply to a relay"),
    (("redis://127.0.0.1:6379/0", "--set", "spool_stream=x"), "use --stream"),
    (("redis://127.0.0.1:6379/0", "--set", "batch_size=0"), "batch_size"),
])
def test_relay_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], clean_env: None,
                                                     args: tuple[str, ...], says: str) -> None:
    code, out, err = run_cli(capsys, "relay", *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("optimizely-odp: error: ") and says in err, err


@pytest.mark.parametrize("problem", ["password", "wrongtype", "acl"])
def test_relay_exits_1_with_one_line_when_redis_refuses_it_for_good(
        processes: Processes, redis_server: RedisServer, problem: str) -> None:
    url = redis_server.url
    if problem == "password":
        redis_server.execute("CONFIG", "SET", "requirepass", PASSWORD)
        redis_server.password = PASSWORD  # for the fixture's own commands
        url = redis_server.url.replace(PASSWORD, "not-the-password")
    elif problem == "wrongtype":
        redis_server.execute("SET", STREAM, "not a stream")
    else:
        redis_server.execute("ACL", "SETUSER", "reader", "on", f">{PASSWORD}", f"~{STREAM}", "-@all", "+@read")
        url = redis_server.url.replace("redis://", f"redis://reader:{PASSWORD}@")
    relay = processes.command("relay", url, "--status-every", "60")
    assert relay.wait(30) == 1, relay.stderr
    error = relay.stderr[-1]
    assert error.startswith("optimizely-odp: error: the spool refuses the relay: Redis spool redis://")
    assert {"password": "authentication refused", "wrongtype": "is not a stream",
            "acl": "not permitted by the user's ACL"}[problem] in error
    assert "not-the-password" not in "\n".join(relay.stderr) and "Traceback" not in "\n".join(relay.stderr)


def test_relay_keeps_trying_while_redis_is_down_says_so_and_delivers_when_it_is_back(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    redis_server.stop()
    relay = processes.command("relay", "--status-every", "0.2",
                              env=environment(OPTIMIZELY_ODP_SPOOL_URL=redis_server.url))  # URL from the environment
    wait_until(lambda: any("spool unavailable" in line for line in relay.stderr), message=str(relay))
    status = next(line for line in relay.stderr if "spool unavailable" in line)
    assert "retrying" in status and "Redis cannot be reached" in status and "stream: figures unknown" in status
    assert relay.process.poll() is None, "a Redis that is down is not fatal"
    redis_server.start()
    append_events(redis_server.url, collector, 700)
    assert collector.wait_for_events(700, timeout=30)
    wait_until(lambda: "spool ok" in relay.stderr[-1] and "delivered 700 " in relay.stderr[-1], message=str(relay))
    relay.process.send_signal(signal.SIGINT)
    assert relay.wait(20) == 0
    assert relay.stderr[-1] == "optimizely-odp: relay: stopped; " + relay.stderr[-1].split("stopped; ")[1]
    assert "delivered 700 events" in relay.stderr[-1] and collector.duplicates() == {}
    assert any("works again" in line for line in relay.stderr), "the state change is logged once"


def test_a_relay_restarted_under_its_name_delivers_what_it_held_at_once(
        processes: Processes, collector: OdpCollector, redis_server: RedisServer) -> None:
    append_events(redis_server.url, collector, 300)
    collector.respond_with(503)
    first = processes.command("relay", redis_server.url, "--consumer", "relay-a", "--claim-after", "600")
    wait_until(lambda: pending_count(redis_server) == 300, message="it claimed everything")
    first.process.send_signal(signal.SIGKILL)  # no hand-back: a crash
    first.wait(10)
    collector.reset_faults()
    second = processes.command("relay", redis_server.url, "--consumer", "relay-a", "--claim-after", "600")
    assert collector.wait_for_events(300, timeout=20), "its own backlog first, not after claim_after (600 s)"
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert any("as relay-a" in line for line in second.stderr)
    assert users(collector) == Counter(f"e-{i}" for i in range(300)) and stream_length(redis_server) == 0


# -- spool stats | purge | replay with a Redis URL ----------------------------------------------------


def test_spool_stats_on_a_redis_url_lists_members_and_masked_destinations(
        capsys: pytest.CaptureFixture[str], clean_env: None, collector: OdpCollector) -> None:
    with RedisServer(password=PASSWORD) as server:
        append_events(server.url, collector, 1500)
        append_events(server.url, collector, 20, key="another-public-key")
        from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

        with RedisStreamSpool(server.url, consumer="member-1") as holder:
            holder.claim(10)
            code, out, err = run_cli(capsys, "spool", "stats", server.url)
            assert code == 0 and err == ""
            assert PASSWORD not in out and "redis://:***@127.0.0.1:" in out
            lines = out.splitlines()
            assert "events:     1,520 waiting (10 claimed, 1,510 not claimed yet)" in lines
            assert "  member-1: holds 10, idle " in out and "members:    1" in lines
            assert "destinations (the oldest 1,000 entries):" in lines
            assert f"  {collector.url} key test...ey: 1,000" in lines
            memory = [line for line in lines if line.startswith("memory:")]
            assert len(memory) == 1 and memory[0].endswith(" bytes in Redis (MEMORY USAGE, an estimate)")

            code, out, _ = run_cli(capsys, "spool", "stats", server.url, "--json", "--sample", "2000")
            report = json.loads(out)
            assert code == 0 and report["events"] == 1520 and report["pending"] == 10
            assert report["destinations_sampled"] == 1520 and len(report["destinations"]) == 2
            assert {d["events"] for d in report["destinations"]} == {1500, 20}
            assert report["consumers"][0]["name"] == "member-1" and PASSWORD not in out
            assert report["memory_bytes"] > 1520 * 100, "an estimate, of at least the entries' JSON"


def test_spool_commands_on_a_redis_url_fail_in_one_line(capsys: pytest.CaptureFixture[str], clean_env: None,
                                                        redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.stop()
    for command in ("stats", "purge", "replay"):
        code, _, err = run_cli(capsys, "spool", command, redis_server.url)
        assert code == 1 and len(err.splitlines()) == 1 and "Redis cannot be reached" in err, (command, err)
    code, _, err = run_cli(capsys, "spool", "stats", str(tmp_path / "x.sqlite"), "--stream", "s")
    assert code == 2 and "--stream: only with a redis://" in err
    code, _, err = run_cli(capsys, "spool", "stats", "$OPTIMIZELY_ODP_SPOOL_URL")
    assert code == 2 and "OPTIMIZELY_ODP_SPOOL_URL is not set" in err


def test_spool_purge_on_a_redis_url_asks_then_deletes_the_stream(
        capsys: pytest.CaptureFixture[str], clean_env: None, monkeypatch: pytest.MonkeyPatch,
        collector: OdpCollector, redis_server: RedisServer) -> None:
    append_events(redis_server.url, collector, 40, stream="other-stream")
    code, _, err = run_cli(capsys, "spool", "purge", redis_server.url, "--stream", "other-stream")
    assert code == 2 and "refusing to delete 40 events without --yes" in err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run_cli(capsys, "spool", "purge", redis_server.url, "--stream", "other-stream")
    assert (code, out) == (1, "nothing deleted\n") and stream_length(redis_server, "other-stream") == 40
    monkeypatch.setenv("OPTIMIZELY_ODP_SPOOL_URL", redis_server.url)
    code, out, _ = run_cli(capsys, "spool", "purge", "$OPTIMIZELY_ODP_SPOOL_URL", "--stream", "other-stream", "--yes")
    assert code == 0 and out.startswith("purged 40 events from redis://127.0.0.1:")
    assert redis_server.execute("EXISTS", "other-stream") == 0


def test_spool_replay_on_a_redis_url_delivers_what_the_stream_held(
        capsys: pytest.CaptureFixture[str], clean_env: None, collector: OdpCollector,
        redis_server: RedisServer) -> None:
    code, out, _ = run_cli(capsys, "spool", "replay", redis_server.url)
    assert code == 0 and "is empty: nothing to replay" in out
    append_events(redis_server.url, collector, 1200)
    code, out, err = run_cli(capsys, "spool", "replay", redis_server.url, "--batch-size", "100")
    assert code == 0, err
    assert "1,200 delivered, 0 refused by ODP (deleted), 0 in the stream now" in out
    assert users(collector) == Counter(f"e-{i}" for i in range(1200))
    assert max(len(r.events) for r in collector.requests) == 100


def test_spool_replay_on_a_redis_url_gives_up_when_odp_keeps_failing_and_leaves_the_events(
        capsys: pytest.CaptureFixture[str], clean_env: None, collector: OdpCollector,
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_ODP_RETRY_INITIAL_BACKOFF", "0.01")
    monkeypatch.setenv("OPTIMIZELY_ODP_RETRY_MAX_BACKOFF", "0.05")
    append_events(redis_server.url, collector, 50)
    collector.respond_with(503)
    code, out, err = run_cli(capsys, "spool", "replay", redis_server.url)
    assert code == 1 and "0 delivered" in out and "50 in the stream now" in out
    assert err.splitlines()[-1].startswith("optimizely-odp: error: not every entry up to ")
    assert re.search(r"ODP failed \d+ requests in a row; 50 events held were handed back", err)
    rows = redis_server.execute("XPENDING", STREAM, "optimizely-odp", "-", "+", "100")
    assert stream_length(redis_server) == 50 and all(row[2] > 3600_000 for row in rows), "handed back"


# -- doctor with spool_url ---------------------------------------------------------------------------------


def test_doctor_shows_the_redis_spool_masked_and_fails_when_it_cannot_be_used(
        capsys: pytest.CaptureFixture[str], clean_env: None, collector: OdpCollector, tmp_path: Path) -> None:
    datafile = tmp_path / "datafile.json"
    datafile.write_text(json.dumps(sample_datafile(collector.url, API_KEY)))
    with RedisServer(password=PASSWORD) as server:
        append_events(server.url, collector, 5)
        code, out, err = run_cli(capsys, "doctor", "--datafile", str(datafile), "--set", f"spool_url={server.url}")
        assert code == 0, out + err
        assert PASSWORD not in out + err
        spool_line = next(line for line in out.splitlines() if line.startswith("spool: "))
        assert spool_line.startswith("spool: redis://:***@127.0.0.1:") and "(ok: " in spool_line
        assert "  spool_url              redis://:***@127.0.0.1:" in out, "the settings table masks it too"

        wrong = server.url.replace(PASSWORD, "wrong-password")
        code, out, err = run_cli(capsys, "doctor", "--datafile", str(datafile), "--set", f"spool_url={wrong}")
        assert code == 1 and "wrong-password" not in out + err
        assert "(error)" in next(line for line in out.splitlines() if line.startswith("spool: "))
        assert "authentication refused" in out and "status: PROBLEM" in out
    code, out, _ = run_cli(capsys, "doctor", "--datafile", str(datafile), "--set", f"spool_url={server.url}")
    assert code == 1 and "(unavailable)" in out and "Redis cannot be reached" in out
