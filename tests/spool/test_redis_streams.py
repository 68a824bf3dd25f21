"""RedisStreamSpool against a real redis-server (started per test by the fixture): no mocks.

What the restart tests show, and what they cannot: a restart by SHUTDOWN keeps everything,
including who holds which entry; a crash of the Redis *process* (SIGKILL) keeps every append
Redis acknowledged once it wrote its AOF buffer (checked in INFO before the kill). The loss
of the Redis *host* (the page cache with it) is not simulated: with ``appendfsync everysec``
it may lose about the last second of appends (docs/FLEET.md).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from optimizely_odp_ext.settings import SettingError
from optimizely_odp_ext.spool import SpooledEvent, SpoolError, SpoolRecord, SpoolUnavailableError
from optimizely_odp_ext.testing.redis_server import RedisServer

STREAM = "optimizely-odp:events"
GROUP = "optimizely-odp"
HOST, KEY = "https://api.zaius.com", "W4WzcEs-ABgXorzY7h1LCQ"
SpoolFactory = Callable[..., Any]
"""The ``make_redis_spool`` fixture."""


@pytest.fixture
def make_redis_spool(redis_server: RedisServer) -> Iterator[SpoolFactory]:
    """Builds ``RedisStreamSpool``s on ``redis_server`` (or ``url=``) and closes them after."""
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    spools: list[RedisStreamSpool] = []

    def make(**kwargs: Any) -> RedisStreamSpool:
        kwargs.setdefault("url", redis_server.url)
        kwargs.setdefault("socket_timeout", 2.0)
        kwargs.setdefault("connect_timeout", 2.0)
        spool = RedisStreamSpool(**kwargs)
        spools.append(spool)
        return spool

    yield make
    for spool in spools:
        spool.close()


def record(i: int, host: str = HOST, key: str = KEY) -> SpoolRecord:
    """Distinct events whose bodies include bytes that are not UTF-8, and a NUL."""
    return SpoolRecord(host, key, b'{"idempotence_id":"%d"}' % i + bytes([i % 256, 0, 0xFF]), 1_700_000_000.25 + i)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def pending_of(server: RedisServer) -> dict[str, str]:
    """entry id -> consumer, from XPENDING."""
    rows = server.execute("XPENDING", STREAM, GROUP, "-", "+", "100000")
    return {row[0].decode(): row[1].decode() for row in rows}


def consumers_of(server: RedisServer) -> set[str]:
    rows = server.execute("XINFO", "CONSUMERS", STREAM, GROUP)
    return {row[row.index(b"name") + 1].decode() for row in rows}


def ids(events: list[SpooledEvent]) -> list[str]:
    return [str(e.id) for e in events]


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://u:hunter22@h/0", "localhost:6379", "", "redis+sentinel://h"])
def test_a_url_that_is_not_redis_is_a_setting_error_naming_the_setting(url: str) -> None:
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    with pytest.raises(SettingError, match="spool_url") as caught:
        RedisStreamSpool(url)
    assert "hunter22" not in str(caught.value)


def test_without_redis_py_the_error_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(SettingError, match=r"install optimizely-odp-ext\[redis\]"):
        RedisStreamSpool("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(("argument", "value"), [("claim_after", 0), ("claim_after", -1.0), ("stream", ""),
                                                 ("group", " "), ("socket_timeout", 0)])
def test_bad_arguments_are_setting_errors_naming_them(argument: str, value: Any) -> None:
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    name = {"stream": "spool_stream", "group": "spool_group"}.get(argument, argument)
    with pytest.raises(SettingError, match=name):
        RedisStreamSpool("redis://127.0.0.1:6379/0", **{argument: value})


def test_import_of_the_package_does_not_import_redis() -> None:
    import subprocess

    code = "import optimizely_odp_ext, optimizely_odp_ext.spool, sys; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the protocol ----------------------------------------------------------------------------


def test_append_claim_ack_roundtrip_keeps_every_byte(make_redis_spool: SpoolFactory) -> None:
    spool = make_redis_spool()
    assert spool.shared is True and spool.write_through is False
    records = [record(i) for i in range(300)] + [record(300, host="https://ödp.example/ü", key="clé-🔑")]
    appended = spool.append(records)
    assert len(appended) == len(records) == len(set(appended))
    assert spool.append([]) == []

    claimed = spool.claim(1000)
    assert ids(claimed) == appended  # oldest first
    assert [e.record for e in claimed] == records
    assert spool.claim(1000) == []  # nothing handed twice

    spool.ack([e.id for e in claimed])
    stats = spool.stats()
    assert (stats["events"], stats["pending"], stats["held"]) == (0, 0, 0)
    assert spool.claim(10) == []


def test_entries_appended_before_any_consumer_existed_are_delivered(make_redis_spool: SpoolFactory) -> None:
    producer, deliverer = make_redis_spool(), make_redis_spool()
    appended = producer.append([record(i) for i in range(5)])  # creates the stream, no group yet
    assert ids(deliverer.claim(10)) == appended


def test_a_unix_socket_url_works(make_redis_spool: SpoolFactory, tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    with RedisServer(config=[f"unixsocket {path}", "unixsocketperm 700"]) as server:
        spool = make_redis_spool(url=f"unix://{path}?db=0")
        appended = spool.append([record(0)])
        assert ids(spool.claim(5)) == appended
        assert spool.description == f"unix://{path}?db=0 stream={STREAM} group={GROUP}"
        assert server.execute("XLEN", STREAM) == 1


def test_two_consumers_never_get_the_same_new_entry(make_redis_spool: SpoolFactory) -> None:
    producer = make_redis_spool()
    appended = producer.append([record(i) for i in range(1000)])
    spools = [make_redis_spool(), make_redis_spool()]
    got: list[list[str]] = [[], []]
    both_claimed = threading.Barrier(2)

    def drain(n: int) -> None:
        got[n] += ids(spools[n].claim(7))
        both_claimed.wait(10)  # each has a share before they race for the rest (a busy machine
        while batch := spools[n].claim(7):  # could otherwise start one thread after the other drained)
            got[n] += ids(batch)

    threads = [threading.Thread(target=drain, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(appended)
    assert got[0] and got[1]


def test_a_dead_consumers_entries_are_claimed_by_another_after_claim_after(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    claim_after = 0.3
    dead, survivor = make_redis_spool(claim_after=claim_after), make_redis_spool(claim_after=claim_after)
    appended = dead.append([record(i) for i in range(10)])
    started = time.monotonic()
    held = dead.claim(10)  # and then it "dies": never acks, never touches
    assert survivor.claim(10) == []  # not before claim_after

    taken = wait_until(lambda: survivor.claim(10))
    assert time.monotonic() - started >= claim_after - 0.01
    assert ids(taken) == appended and [e.record for e in taken] == [e.record for e in held]
    assert set(pending_of(redis_server).values()) == {survivor.consumer}
    assert survivor.stats()["claimed_from_others"] == 10
    assert dead.touch([e.id for e in held]) == [e.id for e in held]  # it lost them, and is told so
    assert dead.stats()["held"] == 0


def test_touch_keeps_entries_from_being_taken_over(make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    claim_after = 1.0
    holder, other = make_redis_spool(claim_after=claim_after), make_redis_spool(claim_after=claim_after)
    holder.append([record(i) for i in range(10)])
    held = holder.claim(10)

    def idle_ms() -> list[int]:
        rows = redis_server.execute("XPENDING", STREAM, GROUP, "-", "+", "100")
        return [int(row[2]) for row in rows]

    wait_until(lambda: min(idle_ms()) >= claim_after * 1000 + 20)  # all could be taken over now
    kept, left = held[:5], held[5:]
    assert holder.touch([e.id for e in kept]) == []  # still its own
    taken = other.claim(10)
    assert ids(taken) == ids(left)  # the untouched ones only
    assert holder.touch([e.id for e in held]) == [e.id for e in left]
    assert pending_of(redis_server) == {**{str(e.id): holder.consumer for e in kept},
                                        **{str(e.id): other.consumer for e in left}}


def test_release_and_close_hand_entries_back_without_waiting_for_claim_after(make_redis_spool: SpoolFactory) -> None:
    first, second, third = (make_redis_spool(claim_after=600) for _ in range(3))
    appended = first.append([record(i) for i in range(6)])
    held = first.claim(6)
    first.release([e.id for e in held[:3]])
    assert ids(second.claim(10)) == appended[:3]
    first.close()  # hands back what it still held
    assert first.stats()["state"] == "closed"
    assert ids(third.claim(10)) == appended[3:]
    with pytest.raises(SpoolError, match="closed"):
        first.append([record(9)])


def test_a_restarted_consumer_with_a_stable_name_gets_its_own_backlog_first(make_redis_spool: SpoolFactory) -> None:
    before = make_redis_spool(consumer="relay-1", claim_after=600)
    appended = before.append([record(i) for i in range(8)])
    assert ids(before.claim(5)) == appended[:5]  # then the process dies without acking
    after = make_redis_spool(consumer="relay-1", claim_after=600)
    assert ids(after.claim(2)) == appended[:2]
    assert ids(after.claim(10)) == appended[2:]


def test_ack_removes_entries_for_good(make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool()
    spool.append([record(i) for i in range(4)])
    claimed = spool.claim(4)
    spool.ack([claimed[0].id, claimed[1].id, "1-1"])  # an unknown id is ignored
    assert redis_server.execute("XLEN", STREAM) == 2
    assert set(pending_of(redis_server)) == {claimed[2].id, claimed[3].id}


def test_delivered_up_to_tells_when_the_fleet_resolved_everything_appended_so_far(
        make_redis_spool: SpoolFactory) -> None:
    producer, deliverer = make_redis_spool(), make_redis_spool()
    appended = producer.append([record(i) for i in range(3)])
    assert not producer.delivered_up_to(appended[-1])  # no group yet
    claimed = deliverer.claim(2)
    assert not producer.delivered_up_to(appended[-1])  # the last one is not handed out
    deliverer.ack([claimed[0].id])
    assert producer.delivered_up_to(appended[0])
    assert not producer.delivered_up_to(appended[1])  # claimed, not acknowledged
    deliverer.ack([claimed[1].id])
    deliverer.ack(ids(deliverer.claim(1)))
    later = producer.append([record(3)])
    assert producer.delivered_up_to(appended[-1])
    assert not producer.delivered_up_to(later[0])


def test_stats_describe_the_stream_cheaply(make_redis_spool: SpoolFactory) -> None:
    spool = make_redis_spool()
    empty = spool.stats()
    assert (empty["kind"], empty["state"], empty["events"], empty["pending"]) == ("redis", "ok", 0, 0)
    assert empty["oldest_event_age"] is None and empty["oldest_pending_age"] is None
    assert empty["oldest_accepted_at"] is None
    spool.append([record(i) for i in range(10)])
    spool.claim(3)
    stats = spool.stats()
    assert stats["description"] == f"{spool.masked_url} stream={STREAM} group={GROUP}"
    assert {k: stats[k] for k in ("events", "pending", "unread", "consumers", "consumers_holding", "held")} == {
        "events": 10, "pending": 3, "unread": 7, "consumers": 1, "consumers_holding": 1, "held": 3}
    assert 0 <= stats["oldest_pending_age"] < 60 and 0 <= stats["oldest_event_age"] < 60
    assert stats["oldest_accepted_at"] == record(0).accepted_at  # as the SQLite spool reports it
    assert stats["last_error"] is None and stats["consumer"] == spool.consumer
    assert isinstance(stats["memory_bytes"], int) and stats["memory_bytes"] > (empty["memory_bytes"] or 0), \
        "Redis's estimate of the stream's memory grows with its entries"


# -- Redis down, hung, restarted ---------------------------------------------------------------


def test_redis_stopped_append_and_claim_raise_unavailable_at_once_and_recover(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool(connect_timeout=1.0)
    spool.append([record(0)])
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(SpoolUnavailableError, match="cannot be reached"):
        spool.append([record(1)])
    assert time.monotonic() - started < 1.0  # refused at once; a timeout would be connect_timeout
    with pytest.raises(SpoolUnavailableError):
        spool.claim(10)
    stats = spool.stats()
    assert stats["state"] == "unavailable" and "cannot be reached" in stats["last_error"]
    assert stats["events"] is None

    redis_server.start()
    spool.append([record(2)])
    assert [e.record for e in spool.claim(10)] == [record(0), record(2)]  # record(1) was never stored
    assert spool.stats()["state"] == "ok"


def test_an_ack_that_failed_while_redis_was_down_is_made_before_the_next_claim(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool(claim_after=0.2)
    appended = spool.append([record(i) for i in range(3)])
    delivered = spool.claim(3)
    redis_server.stop()
    with pytest.raises(SpoolUnavailableError):
        spool.ack([e.id for e in delivered[:2]])
    assert spool.stats()["unacknowledged"] == 2
    redis_server.start()
    # idle longer than claim_after: XAUTOCLAIM would hand them out
    wait_until(lambda: min(row[2] for row in redis_server.execute("XPENDING", STREAM, GROUP, "-", "+", "10")) > 200)
    assert spool.claim(10) == [], "not handed out again: acknowledged before the claim"
    assert pending_of(redis_server) == {delivered[2].id: spool.consumer}
    assert redis_server.execute("XLEN", STREAM) == 1
    spool.ack([delivered[2].id])
    assert spool.delivered_up_to(appended[-1]) and spool.stats()["unacknowledged"] == 0


def test_an_ack_still_failing_at_close_is_not_handed_back_as_undelivered(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool(claim_after=600)
    spool.append([record(i) for i in range(2)])
    delivered, kept = spool.claim(2)
    redis_server.stop()
    with pytest.raises(SpoolUnavailableError):
        spool.ack([delivered.id])
    redis_server.start()
    spool.close()  # the ack is made first; the other is handed back
    assert pending_of(redis_server) == {kept.id: spool.consumer}
    assert redis_server.execute("XLEN", STREAM) == 1
    other = make_redis_spool(claim_after=600)
    assert ids(other.claim(10)) == [kept.id], "handed back: claimable at once"


def test_a_hung_redis_times_out_within_socket_timeout_and_nothing_is_half_written(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    socket_timeout = 0.5
    spool = make_redis_spool(socket_timeout=socket_timeout, connect_timeout=socket_timeout)
    spool.append([record(0)])  # a pooled connection exists
    redis_server.pause()
    try:
        for attempt in range(2):  # on the pooled connection, then on a new one
            started = time.monotonic()
            with pytest.raises(SpoolUnavailableError, match="cannot be reached"):
                spool.append([record(i) for i in range(1, 501)])
            elapsed = time.monotonic() - started
            assert socket_timeout * 0.9 <= elapsed < 2 * socket_timeout + 1.5, (attempt, elapsed)
    finally:
        redis_server.resume()
    # The server may still execute a transaction that reached it before the timeout, but
    # MULTI/EXEC makes each batch all or nothing: 1 plus a multiple of 500, never in between.
    length = redis_server.execute("XLEN", STREAM)
    assert (length - 1) % 500 == 0
    assert spool.stats()["state"] == "ok"


def test_entries_and_pending_state_survive_a_redis_restart(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    holder, other = make_redis_spool(claim_after=600), make_redis_spool(claim_after=600)
    records = [record(i) for i in range(100)]
    appended = holder.append(records)
    held = holder.claim(40)
    redis_server.restart()  # SHUTDOWN writes and fsyncs the AOF, then the same port and data

    stats = other.stats()
    assert (stats["events"], stats["pending"]) == (100, 40)
    rest = other.claim(100)
    assert ids(rest) == appended[40:] and [e.record for e in rest] == records[40:]
    holder.ack([e.id for e in held])
    other.ack([e.id for e in rest])
    assert redis_server.execute("XLEN", STREAM) == 0


def test_entries_written_to_the_aof_survive_a_crash_of_redis(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool()
    records = [record(i) for i in range(100)]
    appended = spool.append(records)

    def aof_written() -> bool:
        info = redis_server.execute("INFO", "persistence").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return fields["aof_buffer_length"] == "0" and fields["aof_pending_bio_fsync"] == "0"

    wait_until(aof_written)
    redis_server.kill()  # SIGKILL: no SHUTDOWN, no save
    redis_server.start()
    claimed = wait_until(lambda: _claim_when_back(spool))
    assert ids(claimed) == appended and [e.record for e in claimed] == records


def _claim_when_back(spool: Any) -> list[SpooledEvent]:
    try:
        return list(spool.claim(1000))
    except SpoolUnavailableError:  # still loading the AOF
        return []


# -- security and refusals ---------------------------------------------------------------------


def test_the_password_never_shows(make_redis_spool: SpoolFactory) -> None:
    password = "S3cret/with:odd@chars"
    with RedisServer(password=password) as server:
        spool = make_redis_spool(url=server.url)
        spool.append([record(0)])
        wrong = make_redis_spool(url=server.url.replace("S3cret", "Wrong1"))
        with pytest.raises(SpoolError, match="authentication") as refused:
            wrong.append([record(1)])
        assert not isinstance(refused.value, SpoolUnavailableError)
        server.stop()
        with pytest.raises(SpoolUnavailableError) as unavailable:
            spool.append([record(2)])
        shown = [spool.description, repr(spool), str(spool.stats()), str(refused.value), str(unavailable.value),
                 str(wrong.stats()), wrong.description]
    encoded = "S3cret%2Fwith%3Aodd%40chars"
    assert encoded in server.url
    for text in shown:
        assert "S3cret" not in text and encoded not in text, text
    assert ":***@127.0.0.1" in spool.description


FLEET_DOC = Path(__file__).resolve().parents[2] / "docs" / "FLEET.md"
ACL_LINE = next(line.strip() for line in FLEET_DOC.read_text().splitlines() if "ACL SETUSER odp" in line)
ACL_COMMANDS = " ".join(word for word in ACL_LINE.split() if word.startswith("+"))
"""The commands of the ACL line docs/FLEET.md recommends, tested as written there."""


def test_a_user_with_the_documented_acl_can_do_everything_and_one_without_xadd_gets_spool_error(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    assert f"~{STREAM} resetchannels -@all +xadd" in ACL_LINE
    redis_server.execute("ACL", "SETUSER", "odp", "on", ">odp-pass-1", f"~{STREAM}", "resetchannels", "-@all",
                         *ACL_COMMANDS.split())
    redis_server.execute("ACL", "SETUSER", "reader", "on", ">odp-pass-2", f"~{STREAM}", "-@all", "+@read")
    url = redis_server.url.replace("redis://", "redis://odp:odp-pass-1@")
    spool = make_redis_spool(url=url, claim_after=0.2, forget_consumers_after=0.2)
    gone = make_redis_spool(url=url, claim_after=0.2, forget_consumers_after=0.2)
    appended = spool.append([record(i) for i in range(4)])
    held = spool.claim(2)
    assert spool.touch([e.id for e in held]) == []
    spool.release([held[1].id])
    gone.ack(ids(gone.claim(1)))  # then idle, holding nothing: forgotten below
    claimed = set(ids(held))

    def gone_is_forgotten() -> bool:
        claimed.update(ids(spool.claim(10)))  # claim() also forgets dead consumers
        return gone.consumer not in consumers_of(redis_server)

    wait_until(gone_is_forgotten)
    spool.ack(appended)
    assert spool.delivered_up_to(appended[-1])
    spool.append([record(5)])
    assert spool.stats()["state"] == "ok" and spool.stats()["consumers_forgotten"] == 1

    # Without the housekeeping commands, delivery still works; the failure shows apart from state.
    minimal = ACL_COMMANDS.replace("+xinfo|consumers ", "").replace("+xgroup|delconsumer ", "")
    redis_server.execute("ACL", "SETUSER", "lean", "on", ">odp-pass-3", f"~{STREAM}", "-@all", *minimal.split())
    lean = make_redis_spool(url=redis_server.url.replace("redis://", "redis://lean:odp-pass-3@"))
    lean.ack([e.id for e in lean.claim(1) + lean.claim(1)])
    lean_stats = lean.stats()
    assert lean_stats["state"] == "ok" and "not permitted" in lean_stats["housekeeping_error"]

    reader = make_redis_spool(url=redis_server.url.replace("redis://", "redis://reader:odp-pass-2@"))
    with pytest.raises(SpoolError, match=r"NOPERM|permission") as caught:
        reader.append([record(9)])
    assert not isinstance(caught.value, SpoolUnavailableError)
    assert "not permitted by the user's ACL" in str(caught.value)
    assert reader.stats()["state"] == "error"


def test_a_key_that_is_not_a_stream_is_a_spool_error(make_redis_spool: SpoolFactory,
                                                      redis_server: RedisServer) -> None:
    redis_server.execute("SET", STREAM, "something else")
    spool = make_redis_spool()
    for call in (lambda: spool.append([record(0)]), lambda: spool.claim(1)):
        with pytest.raises(SpoolError, match="is not a stream") as caught:
            call()
        assert not isinstance(caught.value, SpoolUnavailableError)
        assert KEY not in str(caught.value)  # redis-py's note quoting the XADD is left out
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- the group over time -------------------------------------------------------------------------


def test_dead_consumers_are_forgotten_once_they_hold_nothing(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    options = {"claim_after": 0.2, "forget_consumers_after": 0.3}
    idle, dead, survivor = (make_redis_spool(**options) for _ in range(3))
    appended = idle.append([record(i) for i in range(3)])
    idle.ack(ids(idle.claim(1)))  # holds nothing, then goes quiet
    lost = dead.claim(2)  # holds two, then dies
    assert consumers_of(redis_server) == {idle.consumer, dead.consumer}

    def survivor_took_everything() -> bool:
        survivor.ack(ids(survivor.claim(10)))
        return consumers_of(redis_server) == {survivor.consumer}

    wait_until(survivor_took_everything)
    assert survivor.delivered_up_to(appended[-1]) and redis_server.execute("XLEN", STREAM) == 0
    assert survivor.stats()["claimed_from_others"] == len(lost)
    assert survivor.stats()["consumers_forgotten"] == 2


def test_a_deleted_stream_is_recreated_with_its_group(make_redis_spool: SpoolFactory,
                                                       redis_server: RedisServer) -> None:
    spool = make_redis_spool()
    spool.append([record(0)])
    spool.ack(ids(spool.claim(1)))
    redis_server.execute("DEL", STREAM)  # someone purged it: the group went with it
    appended = spool.append([record(1)])
    assert ids(spool.claim(5)) == appended
    assert spool.stats()["consumers"] == 1


def test_entries_it_cannot_read_are_set_aside_not_lost(make_redis_spool: SpoolFactory,
                                                       redis_server: RedisServer) -> None:
    spool = make_redis_spool(claim_after=600)
    foreign = redis_server.execute("XADD", STREAM, "*", "foo", "bar").decode()
    newer = redis_server.execute("XADD", STREAM, "*", "format", "2", "body", "{}").decode()
    ours = spool.append([record(0)])
    assert ids(spool.claim(10)) == ours
    stats = spool.stats()
    assert (stats["unreadable"], stats["newer_format"]) == (1, 1)
    pending = pending_of(redis_server)
    assert foreign not in pending  # acknowledged for the group, kept in the stream for a human
    assert pending[newer] == spool.consumer  # left for a newer member to take over
    assert redis_server.execute("XLEN", STREAM) == 3


def test_entries_deleted_while_pending_are_counted_and_skipped(make_redis_spool: SpoolFactory,
                                                              redis_server: RedisServer) -> None:
    dead, survivor = make_redis_spool(claim_after=0.2), make_redis_spool(claim_after=0.2)
    dead.append([record(i) for i in range(3)])
    held = dead.claim(3)
    redis_server.execute("XDEL", STREAM, str(held[1].id))
    taken = wait_until(lambda: survivor.claim(10))
    assert ids(taken) == [held[0].id, held[2].id]
    assert survivor.stats()["deleted_while_pending"] == 1
    assert set(pending_of(redis_server)) == {held[0].id, held[2].id}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_is_a_new_member_and_never_touches_the_parents_entries(
        make_redis_spool: SpoolFactory, redis_server: RedisServer) -> None:
    spool = make_redis_spool(claim_after=600)
    appended = spool.append([record(i) for i in range(4)])
    held = spool.claim(2)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, never return into pytest
        status = 1
        try:
            os.close(read_end)
            child_ids = ids(spool.claim(10))
            spool.ack(child_ids)
            lost = spool.touch([e.id for e in held])
            os.write(write_end, f"{spool.consumer}|{','.join(child_ids)}|{spool.stats()['held']}|{lost}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        consumer, child_ids, child_held, child_lost = pipe.read().split("|")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert consumer != spool.consumer
    assert child_ids.split(",") == appended[2:]  # the rest, delivered and acknowledged by the child
    assert (child_held, child_lost) == ("0", "[]")
    assert set(pending_of(redis_server)) == {str(e.id) for e in held}  # the parent's, untouched
    assert spool.touch([e.id for e in held]) == []
    spool.append([record(9)])  # the parent's connections still work
