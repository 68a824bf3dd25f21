"""``RedisStreamSpool``: accepted events in one Redis stream, delivered by one consumer group.

A fleet of processes (any hosts) shares one stream. Every process appends the events it
accepts; every process that delivers is a member (a *consumer*) of one consumer group and
delivers whatever :meth:`RedisStreamSpool.claim` hands it, whoever appended it. An entry
leaves the stream only when ODP acknowledged it, or it was given up by a documented rule
(:meth:`RedisStreamSpool.ack`). Built on redis-py (``pip install optimizely-odp-ext[redis]``);
works with Redis >= 6.2 and Valkey. This module is the only one that imports ``redis``.

The design, decision by decision:

- **An entry** is ``XADD <stream> * format 1 host <h> key <k> body <b> accepted_at <t>``:
  the destination (host, public key) travels with the event, and ``body`` is the event's
  JSON exactly as sent (its idempotence id inside), so a redelivery is a duplicate ODP can
  recognise, never a new event. ``format`` lets a later version change the layout.
- **append** sends all its ``XADD`` in one ``MULTI``/``EXEC`` pipeline: one round trip, and
  all-or-nothing even when the connection drops half-way (Redis discards an unfinished
  transaction; the AOF keeps it whole). The stream is never trimmed (no ``MAXLEN``): an
  undelivered event is never dropped to save memory; size Redis for the outage you plan for.
  A timeout *after* ``EXEC`` was sent is the one ambiguous case: the events may be stored
  although :class:`SpoolUnavailableError` is raised; appending them again stores a second
  entry with the same body (same idempotence id).
- **claim** (never blocks on an empty stream; the caller decides how often to poll):
  1. with a consumer name given by the caller (a relay with a stable name, restarted):
     once, this consumer's own pending entries from its previous life (``XREADGROUP 0``);
     generated names (``host-pid-random``) are new in every process, so this is skipped;
  2. entries that any consumer left pending longer than ``claim_after`` (``XAUTOCLAIM``, a
     cursor kept between calls; a full pass at most every ``claim_after / 4``): this is how
     the entries of a process that died are delivered by the living;
  3. new entries (``XREADGROUP >``).
  The group is created on first use at id ``0`` with ``MKSTREAM`` (``BUSYGROUP`` ignored),
  so entries appended before any consumer existed are delivered, and again if the stream
  was deleted meanwhile (``NOGROUP``).
- **ack** is ``XACK`` + ``XDEL`` in one ``MULTI``/``EXEC``. When Redis cannot be reached, the
  ids are kept and acknowledged again with the next ack, or before the next claim or close
  (the first attempt may have been executed with its reply lost: acknowledging twice is
  harmless). Until then the entries stay pending with this consumer, so a flush waits for
  them; if this process dies first, another member delivers them again after ``claim_after``.
- **touch** keeps the entries a process is still delivering (a long request, a retry
  backoff during an ODP outage) from being taken over: it resets their idle time with
  ``XCLAIM ... JUSTID``, only for entries the group still lists as this consumer's. The
  manager calls it at least every ``claim_after / 3`` (:attr:`touch_interval`). Entries
  another consumer took over meanwhile (this process stalled longer than ``claim_after``)
  are returned: they are the other's to deliver now.
- **release** (and :meth:`close`) hands entries back undelivered, immediately claimable by
  any member, so a graceful shutdown costs no ``claim_after`` wait.
- **Dead consumers** are deleted from the group (``XGROUP DELCONSUMER``) once they hold no
  entries and were idle ``forget_consumers_after`` seconds (default one hour), checked at
  most every quarter of that by whichever member claims. The check of "holds no entries"
  and the delete run in one ``MULTI``; if a consumer read entries in between, they are given
  back to it at once (``XCLAIM ... FORCE``), so no entry ever leaves the group's list.
- **Entries this version cannot read**: a newer ``format`` is left pending (after
  ``claim_after`` a newer member of the fleet takes it over); an entry without our fields
  (another program's) is acknowledged for the group but left in the stream for a human to
  inspect, counted as ``unreadable``. Entries deleted from the stream by someone else
  while pending are counted as ``deleted_while_pending``.
- **Timeouts and errors**: every call is bounded by ``socket_timeout`` (each read or write)
  and ``connect_timeout`` (each connect), and is never retried by redis-py (the caller
  retries; a silent retry of ``XADD`` could store an event twice). Connection errors,
  timeouts, a loading, read-only, out-of-memory or cannot-persist (``MISCONF``) server raise
  :class:`SpoolUnavailableError`; anything else (``WRONGTYPE``, ``NOPERM``, a wrong
  password) :class:`SpoolError`. The password never appears in a message, in
  :attr:`description` or in :meth:`stats`.
- **Fork**: redis-py's connection pool notices a fork and opens new connections in the
  child (never closing the parent's sockets). A forked child also gets a new consumer name
  and forgets what the parent held, so it never delivers or touches the parent's entries.
- **Durability**: as durable as the Redis it writes to. With ``appendonly yes`` and
  ``appendfsync everysec``, an acknowledged append survives a crash of the Redis process
  (it is in the AOF, in the page cache); a power loss or kernel crash of the Redis host
  can lose about the last second (up to two when the disk is slow). Redis Cluster is not
  supported (one stream key, one node).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from optimizely_odp_ext.settings import SettingError
from optimizely_odp_ext.spool.base import SpooledEvent, SpoolError, SpoolId, SpoolRecord, SpoolUnavailableError
from optimizely_odp_ext.spool.urls import mask_url, split_userinfo

__all__ = ["DEFAULT_CLAIM_AFTER", "DEFAULT_GROUP", "DEFAULT_STREAM", "RedisStreamSpool", "mask_url"]

DEFAULT_STREAM = "optimizely-odp:events"
DEFAULT_GROUP = "optimizely-odp"
DEFAULT_CLAIM_AFTER = 60.0
DEFAULT_FORGET_CONSUMERS_AFTER = 3600.0
DEFAULT_TIMEOUT = 5.0
FORMAT_VERSION = 1
URL_SCHEMES = ("redis", "rediss", "unix")

_FIELDS = (b"host", b"key", b"body", b"accepted_at")
_AUTOCLAIM_CALLS = 4
"""Most XAUTOCLAIM calls in one claim(); each scans at most 10 x its COUNT pending entries."""
_XCLAIM_CHUNK = 1000
_RELEASED_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
"""Idle time given to released entries: any member's XAUTOCLAIM takes them at once."""
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "OOM", "MISCONF", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY")
_MISSING_GROUP = "NOGROUP"
_PIPELINE_NOTE = "of pipeline caused error: "
_SHORTEST_SCRUBBED = 4
"""Shorter passwords are not scrubbed from messages (they would garble every word); redis-py's
messages never contain the password anyway."""

T = TypeVar("T")
_OPEN_SPOOLS: weakref.WeakSet[RedisStreamSpool] = weakref.WeakSet()


def _url_secrets(url: str) -> list[str]:
    """Every spelling of the URL's password (and of a lone user part), to scrub from messages."""
    found = []
    _, userinfo, _ = split_userinfo(url)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found += [password, userinfo] if colon else [user]
    query = url.partition("?")[2]
    found += [value for name, _, value in (pair.partition("=") for pair in query.split("&"))
              if name.lower() == "password"]
    spellings = {spelling for secret in found if len(secret) >= _SHORTEST_SCRUBBED
                 for spelling in (secret, urllib.parse.unquote(secret), urllib.parse.quote(secret, safe=""))}
    return sorted(spellings, key=len, reverse=True)


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise SettingError(f"spool_url must be a redis://, rediss:// or unix:// URL, not {type(url).__name__}")
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in URL_SCHEMES:
        raise SettingError(f"spool_url must be a redis://, rediss:// or unix:// URL, not {mask_url(url)!r}")
    return url


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SettingError(f"{name} must be a number of seconds above 0, not {value!r}")
    return float(value)


def _check_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _import_redis() -> Any:
    try:
        import redis
        import redis.backoff
        import redis.exceptions
        import redis.retry
    except ImportError:
        raise SettingError("spool_url needs redis-py: install optimizely-odp-ext[redis]") from None
    major = str(getattr(redis, "__version__", "0")).split(".", 1)[0]
    if not major.isdigit() or int(major) < 5:
        raise SettingError(f"spool_url needs redis-py 5 or later (found {redis.__version__}): "
                           "install optimizely-odp-ext[redis]")
    return redis


def generated_consumer_name() -> str:
    """``<hostname>-<pid>-<6 hex digits>``: unique per process, even across pid reuse."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _reason(error: BaseException) -> str:
    """What Redis said, without redis-py's note on which pipelined command failed: that note
    quotes the command's arguments, an entry's public key among them."""
    return str(error).rpartition(_PIPELINE_NOTE)[2]


def _id_key(entry_id: SpoolId) -> tuple[int, int]:
    """A stream id ``"<ms>-<seq>"`` as a comparable pair."""
    ms, _, seq = str(entry_id).partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSpool:
    """A :class:`~optimizely_odp_ext.spool.base.Spool` on a Redis stream read by one consumer
    group: durable across the loss of any application host, shared by a fleet.

    Every method is thread-safe and blocks for at most one or two round trips to Redis,
    each bounded by ``socket_timeout`` / ``connect_timeout``. The constructor does not
    connect: an unreachable Redis at start-up shows in the first call (and in
    :meth:`stats`), not as an error here.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
            ``unix://[[user]:password@]/path?db=N``. redis-py's query options apply, e.g.
            ``?socket_timeout=2`` (overrides the argument).
        stream: The stream's key (setting ``spool_stream``).
        group: The consumer group every deliverer joins (setting ``spool_group``).
        consumer: This process's name in the group; default: ``host-pid-random``, new in
            every process. Give a stable name only to a process that restarts under it
            (a relay); never the same name to two live processes.
        claim_after: Seconds an entry may stay pending with one consumer without being
            touched before another takes it over (setting ``claim_after``). Must exceed the
            longest stall of a live process between two :meth:`touch` calls.
        forget_consumers_after: Seconds a consumer that holds nothing may stay idle before
            it is deleted from the group.
        socket_timeout: Seconds one read or write to Redis may take.
        connect_timeout: Seconds one connection attempt may take.

    Raises:
        SettingError: a bad URL, a bad argument (each message names it), or redis-py missing.
    """

    shared = True
    write_through = False

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        claim_after: float = DEFAULT_CLAIM_AFTER,
        forget_consumers_after: float = DEFAULT_FORGET_CONSUMERS_AFTER,
        socket_timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        url = _check_url(url)
        self.stream = _check_name("spool_stream", stream)
        self.group = _check_name("spool_group", group)
        self._consumer_given = consumer is not None
        self.consumer = _check_name("consumer", consumer) if consumer is not None else generated_consumer_name()
        self.claim_after = _check_positive("claim_after", claim_after)
        self.forget_consumers_after = _check_positive("forget_consumers_after", forget_consumers_after)
        if self.forget_consumers_after < self.claim_after:
            raise SettingError(f"forget_consumers_after ({forget_consumers_after}) must be at least "
                               f"claim_after ({claim_after})")
        socket_timeout = _check_positive("socket_timeout", socket_timeout)
        connect_timeout = _check_positive("connect_timeout", connect_timeout)
        self.masked_url = mask_url(url)
        self.description = f"{self.masked_url} stream={self.stream} group={self.group}"
        self._secrets = _url_secrets(url)
        redis = _import_redis()
        self._errors: Any = redis.exceptions
        try:
            self._redis: Any = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), retry_on_timeout=False)
        except (ValueError, TypeError, redis.exceptions.RedisError) as error:
            raise SettingError(f"spool_url {self.masked_url!r} is not valid: {self._scrub(str(error))}") from None
        options = self._redis.connection_pool.connection_kwargs
        self.socket_timeout = float(options.get("socket_timeout") or socket_timeout)
        self.connect_timeout = float(options.get("socket_connect_timeout") or connect_timeout)

        self._lock = threading.Lock()  # guards everything below
        self._pid = os.getpid()
        self._closed = False
        self._held: set[str] = set()
        """Ids handed out by claim() and not acked, released or taken over since."""
        self._ack_later: set[str] = set()
        """Held ids whose ack failed because Redis could not be reached: acknowledged with the next
        ack, or before the next claim or close."""
        self._group_ready = False
        self._backlog_from: str | None = "0" if self._consumer_given else None
        self._autoclaim_cursor = "0-0"
        self._next_autoclaim = 0.0
        self._next_forget = 0.0
        self._state = "ok"
        self._last_error: str | None = None
        self._housekeeping_error: str | None = None
        self._counts = {"claimed_from_others": 0, "unreadable": 0, "deleted_while_pending": 0,
                        "newer_format": 0, "consumers_forgotten": 0}
        _OPEN_SPOOLS.add(self)

    @property
    def touch_interval(self) -> float:
        """How often (seconds) a deliverer should :meth:`touch` the entries it still holds."""
        return self.claim_after / 3

    # -- the Spool protocol ------------------------------------------------------------------

    def append(self, records: Sequence[SpoolRecord]) -> list[SpoolId]:
        """Add ``records`` to the stream in one ``MULTI``/``EXEC``; return their entry ids.

        Blocks for one round trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached (or cannot write) now; nothing was
                stored (but see the module docstring for a timeout after ``EXEC`` was sent).
            SpoolError: Redis refused (``WRONGTYPE``, ``NOPERM``, authentication).
        """
        if not records:
            return []
        entries = [{"format": str(FORMAT_VERSION), "host": r.host.encode("utf-8", "surrogatepass"),
                    "key": r.api_key.encode("utf-8", "surrogatepass"), "body": bytes(r.body),
                    "accepted_at": repr(float(r.accepted_at))} for r in records]

        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            for fields in entries:
                pipe.xadd(self.stream, fields)
            return list(pipe.execute())

        return [_text(entry_id) for entry_id in self._call("append", run)]

    def claim(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` entries for this process to deliver, none it holds already: its own
        backlog from a previous life (a stable consumer name only), entries others left
        pending longer than ``claim_after``, then new entries. Never waits for entries to
        arrive. Blocks for a few round trips; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached and nothing was claimed.
            SpoolError: Redis refused and nothing was claimed.
        """
        if limit <= 0:
            return []
        self._retry_acks()
        claimed: list[SpooledEvent] = []
        steps: tuple[Callable[[int], list[SpooledEvent]], ...] = (
            self._claim_own_backlog, self._claim_abandoned, self._claim_new)
        try:
            for step in steps:
                if len(claimed) < limit:
                    claimed += step(limit - len(claimed))
            self._forget_dead_consumers()
        except SpoolError:
            if not claimed:
                raise
        return claimed

    def ack(self, ids: Sequence[SpoolId]) -> None:
        """These entries are delivered (or given up by a documented rule): ``XACK`` and
        ``XDEL`` them in one ``MULTI``/``EXEC``. Unknown ids are ignored. Blocks for one round
        trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached; the ids are acknowledged with the
                next ack, claim or close (see the module docstring).
        """
        with self._lock:
            entry_ids = list(dict.fromkeys([str(i) for i in ids] + sorted(self._ack_later, key=_id_key)))
        if not entry_ids:
            return

        def run(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            for result in pipe.execute(raise_on_error=False):
                if isinstance(result, Exception) and not _reason(result).startswith(_MISSING_GROUP):
                    raise result  # a missing group (a deleted stream) leaves nothing to ack

        try:
            self._call("ack", run)
        except SpoolUnavailableError:
            with self._lock:
                self._ack_later.update(entry_ids)
            raise
        with self._lock:
            self._held.difference_update(entry_ids)
            self._ack_later.difference_update(entry_ids)

    def _retry_acks(self) -> None:
        """Acknowledge what a failed ack left (before a claim or close); a failure stays for later."""
        with self._lock:
            waiting = bool(self._ack_later)
        if waiting:
            with contextlib.suppress(SpoolError):
                self.ack([])

    def stats(self) -> dict[str, Any]:
        """What the stream holds, read in one pipelined round trip of cheap commands (``XLEN``,
        ``XINFO GROUPS``, ``XPENDING`` summary, ``XRANGE - + COUNT 1``, ``TIME``, ``MEMORY
        USAGE`` with its default 5 samples: O(1) apart from the number of groups and of consumers
        holding entries). Never raises: when Redis cannot be read, ``state`` says so and only
        this process's own figures are filled in.

        Returns:
            ``kind`` ("redis"), ``state`` ("ok", "unavailable", "error" or "closed"), ``description``,
            ``last_error`` (None or the last failure's message), ``stream``, ``group``,
            ``consumer``, ``events`` (entries in the stream), ``pending`` (claimed, not yet
            acknowledged), ``unread`` (not yet claimed by anyone; None when Redis cannot tell),
            ``consumers``, ``consumers_holding`` (consumers with pending entries),
            ``oldest_event_age`` and ``oldest_pending_age`` (seconds since the append, by Redis's
            clock; None when there is none), ``oldest_accepted_at`` (the oldest entry's
            ``time.time()`` when it was accepted, as the SQLite spool reports it; None when there
            is none), ``memory_bytes`` (Redis's estimate of the memory the stream takes, from a
            sample of its entries; None when there is no stream or Redis does not allow
            ``MEMORY USAGE``), ``held`` (entries this process holds),
            ``unacknowledged`` (delivered, their ack to be tried again), and
            counters: ``claimed_from_others``, ``unreadable``, ``deleted_while_pending``,
            ``newer_format`` (sightings: such an entry is seen again each time it comes back),
            ``consumers_forgotten``; ``housekeeping_error`` (the last failure of
            forgetting dead consumers or setting unreadable entries aside, which ``state``
            ignores). Thread-safe.
        """
        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.time()
            pipe.xlen(self.stream)
            pipe.xrange(self.stream, "-", "+", count=1)
            pipe.xinfo_groups(self.stream)
            pipe.xpending(self.stream, self.group)
            pipe.memory_usage(self.stream)
            return list(pipe.execute(raise_on_error=False))

        figures: dict[str, Any] = {"events": None, "pending": None, "unread": None, "consumers": None,
                                   "consumers_holding": None, "oldest_event_age": None,
                                   "oldest_accepted_at": None, "oldest_pending_age": None, "memory_bytes": None}
        with contextlib.suppress(SpoolError):
            replies = self._call("stats", run)
            for reply in replies[:3]:
                if isinstance(reply, Exception) and "no such key" not in str(reply):
                    raise self._fail("stats", reply)
            try:
                figures.update(self._read_stats(replies))
            except (KeyError, TypeError, ValueError, IndexError) as error:  # a Redis that answers oddly
                raise self._fail("stats", error) from None
        with self._lock:
            state = "closed" if self._closed else self._state
            return {"kind": "redis", "state": state, "description": self.description, "last_error": self._last_error,
                    "housekeeping_error": self._housekeeping_error, "stream": self.stream, "group": self.group,
                    "consumer": self.consumer, **figures, "held": len(self._held),
                    "unacknowledged": len(self._ack_later), **self._counts}

    def _read_stats(self, replies: list[Any]) -> dict[str, Any]:
        (seconds, micros), length, first, groups, summary, memory = replies
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        figures: dict[str, Any] = {"events": int(length), "pending": 0, "unread": int(length),
                                   "consumers": 0, "consumers_holding": 0}
        if first and not isinstance(first, Exception):
            entry_id, fields = first[0]
            figures["oldest_event_age"] = max(0.0, (now_ms - _id_key(_text(entry_id))[0]) / 1000)
            with contextlib.suppress(KeyError, TypeError, ValueError):  # an entry of another format
                figures["oldest_accepted_at"] = float(fields[b"accepted_at"])
        ours = [] if isinstance(groups, Exception) else [g for g in groups if _text(g["name"]) == self.group]
        if ours:
            lag = ours[0].get("lag")
            figures.update(pending=int(ours[0]["pending"]), consumers=int(ours[0]["consumers"]),
                           unread=None if lag is None else int(lag))
        if isinstance(memory, int):  # else an error: a Redis that does not allow MEMORY USAGE
            figures["memory_bytes"] = memory
        if isinstance(summary, dict) and summary.get("pending"):
            figures["consumers_holding"] = len(summary.get("consumers") or ())
            figures["oldest_pending_age"] = max(0.0, (now_ms - _id_key(_text(summary["min"]))[0]) / 1000)
        return figures

    def close(self) -> None:
        """Hand back the entries this process still holds (:meth:`release`, best effort) and
        close the connections. Idempotent, thread-safe; blocks for at most two round trips,
        each bounded by the timeouts."""
        with self._lock:
            if self._closed:
                return
        self._retry_acks()
        with self._lock:
            held = sorted(self._held - self._ack_later, key=_id_key)
        if held:
            with contextlib.suppress(SpoolError):
                self.release(held)
        with self._lock:
            self._closed = True
        with contextlib.suppress(Exception):
            self._redis.close()
        _OPEN_SPOOLS.discard(self)

    # -- beyond the protocol: keeping, giving back, flushing ----------------------------------

    def touch(self, ids: Sequence[SpoolId]) -> list[SpoolId]:
        """Keep these held entries from being taken over while they are still being delivered:
        reset their idle time (``XCLAIM … JUSTID``), for those the group still lists as this
        consumer's. Ids not held by this process are ignored. Call at least every
        :attr:`touch_interval`. Blocks for two round trips; thread-safe.

        Returns:
            The held ids this consumer lost meanwhile (another member took them over after
            ``claim_after``, or delivered them): the caller should stop delivering them.

        Raises:
            SpoolUnavailableError: Redis cannot be reached; nothing was touched.
        """
        mine = self._held_among(ids)
        if not mine:
            return []
        owned = self._owned(mine)
        if owned:
            self._call("touch", lambda client: self._xclaim(client, owned))
        lost = [entry_id for entry_id in mine if entry_id not in owned]
        with self._lock:
            self._held.difference_update(lost)
        return list(lost)

    def release(self, ids: Sequence[SpoolId]) -> None:
        """Give these held entries back undelivered: any member's next claim may take them
        (they are marked idle for years), this one's included. Blocks for two round trips;
        thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached; they are released after
                ``claim_after`` anyway.
        """
        mine = self._held_among(ids)
        if not mine:
            return
        owned = self._owned(mine)
        if owned:
            self._call("release", lambda client: self._xclaim(client, owned, idle_ms=_RELEASED_IDLE_MS))
        with self._lock:
            self._held.difference_update(mine)

    def delivered_up_to(self, entry_id: SpoolId) -> bool:
        """True when every entry up to ``entry_id`` (an id :meth:`append` returned) is resolved
        by the fleet: the group has handed out everything up to it, and none of it is still
        pending. For a flush: poll it with the last id this process appended. Entries of
        other processes appended before it count too, so it may wait for a dead member's
        entries to be taken over (``claim_after``). Blocks for one round trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached.
        """
        target = _id_key(entry_id)

        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.xinfo_groups(self.stream)
            pipe.xpending_range(self.stream, self.group, "-", str(entry_id), 1)
            return list(pipe.execute(raise_on_error=False))

        groups, pending = self._call("flush", run)
        if isinstance(groups, Exception):
            if "no such key" in str(groups):
                return True  # the stream is gone: nothing of it is waiting
            raise self._fail("flush", groups)
        ours = [g for g in groups if _text(g["name"]) == self.group]
        if not ours:
            return False  # nobody has read the stream yet
        if isinstance(pending, Exception):
            raise self._fail("flush", pending)
        return _id_key(_text(ours[0]["last-delivered-id"])) >= target and not pending

    # -- for an operator (optimizely-odp spool stats|replay|purge) ------------------------------

    def consumers(self) -> list[dict[str, Any]]:
        """The group's members: ``name``, ``pending`` (entries it holds) and ``idle`` (seconds
        since it last claimed or touched anything), most entries first; [] when the stream or
        the group does not exist. One ``XINFO CONSUMERS`` (O(members)). Blocks for one round
        trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached.
            SpoolError: Redis refused.
        """
        def run(client: Any) -> list[Any]:
            try:
                return list(client.xinfo_consumers(self.stream, self.group))
            except self._errors.ResponseError as error:
                if _reason(error).startswith(_MISSING_GROUP) or "no such key" in str(error):
                    return []
                raise

        found = [{"name": _text(row["name"]), "pending": int(row["pending"]), "idle": int(row["idle"]) / 1000}
                 for row in self._call("list consumers", run)]
        return sorted(found, key=lambda row: (-row["pending"], row["name"]))

    def destinations(self, sample: int) -> tuple[int, dict[tuple[str, str], int]]:
        """Where the oldest ``sample`` entries go: ``(entries read, {(host, public key): count})``.
        Reads them with ``XRANGE … COUNT 1000`` pages: O(``sample``) on Redis and about
        ``sample`` times the entry size (~400 bytes) over the network. Entries that are not ours
        are counted under ``("", "")``. Blocks for ``sample / 1000`` round trips; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached.
            SpoolError: Redis refused.
        """
        counts: dict[tuple[str, str], int] = {}
        read, start = 0, "-"
        while read < sample:
            count = min(_XCLAIM_CHUNK, sample - read)
            rows = self._call("read entries", functools.partial(self._xrange, start=start, count=count))
            for _, fields in rows:
                where = (_text(fields.get(b"host", b"")), _text(fields.get(b"key", b"")))
                counts[where] = counts.get(where, 0) + 1
            read += len(rows)
            if len(rows) < count:
                break
            start = "(" + _text(rows[-1][0])
        return read, counts

    def _xrange(self, client: Any, start: str, count: int) -> list[Any]:
        rows: list[Any] = client.xrange(self.stream, start, "+", count=count)
        return rows

    def last_entry_id(self) -> str | None:
        """The id of the newest entry in the stream (None when it is empty): a target for
        :meth:`delivered_up_to`. Blocks for one round trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached.
            SpoolError: Redis refused.
        """
        rows = self._call("read the last entry", lambda client: client.xrevrange(self.stream, "+", "-", count=1))
        return _text(rows[0][0]) if rows else None

    def purge(self) -> int:
        """Delete the stream and its consumer group (``XLEN`` and ``DEL`` in one ``MULTI``/``EXEC``),
        every undelivered entry with them; returns how many entries it held. Members still
        running recreate both on their next call; what they were delivering is then acknowledged
        into nothing. Blocks for one round trip; thread-safe.

        Raises:
            SpoolUnavailableError: Redis cannot be reached; nothing was deleted.
            SpoolError: Redis refused (the key is not a stream, or the ACL forbids ``DEL``).
        """
        def run(client: Any) -> int:
            if _text(client.type(self.stream)) not in ("stream", "none"):
                raise self._errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
            pipe = client.pipeline(transaction=True)
            pipe.xlen(self.stream)
            pipe.delete(self.stream)
            length, _ = pipe.execute()
            return int(length)

        deleted = self._call("purge", run)
        with self._lock:
            self._held.clear()
            self._ack_later.clear()
            self._group_ready = False
        return deleted

    # -- claim's steps --------------------------------------------------------------------------

    def _claim_own_backlog(self, limit: int) -> list[SpooledEvent]:
        with self._lock:
            start = self._backlog_from
        if start is None:
            return []
        reply = self._call("claim", lambda client: client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=limit), needs_group=True)
        entries = reply[0][1] if reply else []
        with self._lock:
            self._backlog_from = _text(entries[-1][0]) if len(entries) >= limit else None
        return self._accept(entries, held_skip=True)

    def _claim_abandoned(self, limit: int) -> list[SpooledEvent]:
        now = time.monotonic()
        with self._lock:
            if now < self._next_autoclaim:
                return []
        claimed: list[SpooledEvent] = []
        for _ in range(_AUTOCLAIM_CALLS):
            with self._lock:
                cursor = self._autoclaim_cursor
            reply = self._call("claim", functools.partial(self._xautoclaim, cursor=cursor, count=limit - len(claimed)),
                               needs_group=True)
            next_cursor, entries = _text(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            taken = self._accept(entries, held_skip=True)
            with self._lock:
                self._autoclaim_cursor = next_cursor
                self._counts["deleted_while_pending"] += len(deleted)
                self._counts["claimed_from_others"] += len(taken)
                if next_cursor == "0-0":
                    self._next_autoclaim = now + self.claim_after / 4
            claimed += taken
            if next_cursor == "0-0" or len(claimed) >= limit:
                break
        return claimed

    def _xautoclaim(self, client: Any, cursor: str, count: int) -> list[Any]:
        reply: list[Any] = client.xautoclaim(self.stream, self.group, self.consumer, int(self.claim_after * 1000),
                                             cursor, count=count)
        return reply

    def _claim_new(self, limit: int) -> list[SpooledEvent]:
        reply = self._call("claim", lambda client: client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=limit), needs_group=True)
        return self._accept(reply[0][1] if reply else [], held_skip=False)

    def _accept(self, entries: Iterable[tuple[Any, Any]], held_skip: bool) -> list[SpooledEvent]:
        """Decode claimed entries, hold the deliverable ones; acknowledge unreadable or deleted
        ones for the group (best effort: if that fails they come back after claim_after)."""
        events: list[SpooledEvent] = []
        drop: list[str] = []
        with self._lock:
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                if held_skip and entry_id in self._held:
                    continue  # already being delivered here; XAUTOCLAIM just refreshed it
                if not fields:  # deleted while pending (Redis 6.2 reports it this way)
                    self._counts["deleted_while_pending"] += 1
                    drop.append(entry_id)
                    continue
                event = self._decode(entry_id, fields)
                if event is None:
                    drop.append(entry_id)
                elif isinstance(event, SpooledEvent):
                    self._held.add(entry_id)
                    events.append(event)
        if drop:
            with contextlib.suppress(SpoolError):
                self._call("set aside unreadable entries", lambda client: client.xack(self.stream, self.group, *drop),
                           housekeeping=True)
        return events

    def _decode(self, entry_id: str, fields: dict[bytes, bytes]) -> SpooledEvent | bool | None:
        """The event; None for an entry that is not ours (to acknowledge); False for a newer
        format (left pending). Called with the lock held."""
        version = fields.get(b"format", b"")
        if version.isdigit() and int(version) > FORMAT_VERSION:
            self._counts["newer_format"] += 1
            return False
        try:
            if version != str(FORMAT_VERSION).encode() or not all(name in fields for name in _FIELDS):
                raise ValueError("not an ODP event entry")
            return SpooledEvent(entry_id, _text(fields[b"host"]), _text(fields[b"key"]), fields[b"body"],
                                float(fields[b"accepted_at"]))
        except (ValueError, UnicodeDecodeError):
            self._counts["unreadable"] += 1
            return None

    def _forget_dead_consumers(self) -> None:
        """Housekeeping: a failure is kept for stats() (``housekeeping_error``), never raised."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_forget:
                return
            self._next_forget = now + self.forget_consumers_after / 4
        idle_ms = self.forget_consumers_after * 1000
        with contextlib.suppress(SpoolError):
            consumers = self._call("forget dead consumers",
                                   lambda client: client.xinfo_consumers(self.stream, self.group), housekeeping=True)
            for consumer in consumers:
                name = _text(consumer["name"])
                if name != self.consumer and not consumer["pending"] and consumer["idle"] >= idle_ms:
                    self._call("forget dead consumers", functools.partial(self._delete_consumer, name=name),
                               housekeeping=True)

    def _delete_consumer(self, client: Any, name: str) -> None:
        """Delete a consumer whose list of entries was just seen empty. The check and the delete
        run in one transaction; entries it read in between are given straight back to it."""
        pipe = client.pipeline(transaction=True)
        pipe.xpending_range(self.stream, self.group, "-", "+", 100_000, consumername=name)
        pipe.xgroup_delconsumer(self.stream, self.group, name)
        pending, _ = pipe.execute()
        if pending:
            self._xclaim(client, [_text(p["message_id"]) for p in pending], consumer=name, force=True)
        else:
            with self._lock:
                self._counts["consumers_forgotten"] += 1

    # -- helpers ------------------------------------------------------------------------------

    def _held_among(self, ids: Sequence[SpoolId]) -> list[str]:
        with self._lock:
            return [str(i) for i in ids if str(i) in self._held]

    def _owned(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` the group lists as this consumer's pending entries."""
        keys = [_id_key(i) for i in ids]
        low, high = ids[keys.index(min(keys))], ids[keys.index(max(keys))]
        with self._lock:
            bound = len(self._held) + self._counts["newer_format"] + 100
        pending = self._call("touch", lambda client: client.xpending_range(
            self.stream, self.group, low, high, bound, consumername=self.consumer), needs_group=True)
        listed = {_text(p["message_id"]) for p in pending}
        return {entry_id for entry_id in ids if entry_id in listed}

    def _xclaim(self, client: Any, ids: Iterable[str], consumer: str | None = None, idle_ms: int | None = None,
                force: bool = False) -> None:
        ordered = sorted(ids, key=_id_key)
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(ordered), _XCLAIM_CHUNK):
            pipe.xclaim(self.stream, self.group, consumer or self.consumer, 0, ordered[start:start + _XCLAIM_CHUNK],
                        idle=idle_ms, force=force, justid=True)
        pipe.execute()

    def _ensure_group(self, client: Any) -> None:
        try:
            client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._errors.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        with self._lock:
            self._group_ready = True

    def _call(self, doing: str, run: Callable[[Any], T], needs_group: bool = False, housekeeping: bool = False) -> T:
        """Run ``run(client)``: errors translated, state kept. With ``needs_group``, the group is
        created first if this process has not seen it, and again once on ``NOGROUP``. A failure
        of ``housekeeping`` is kept apart and leaves ``state`` as it was."""
        with self._lock:
            if self._closed:
                raise SpoolError(f"Redis spool {self.description} is closed")
            group_ready = self._group_ready
        try:
            if needs_group and not group_ready:
                self._ensure_group(self._redis)
            try:
                result = run(self._redis)
            except self._errors.ResponseError as error:
                if not (needs_group and _reason(error).startswith(_MISSING_GROUP)):
                    raise
                self._ensure_group(self._redis)  # the stream was deleted since
                result = run(self._redis)
        except Exception as error:
            raise self._fail(doing, error, housekeeping) from None  # redis-py's message may quote a key
        with self._lock:
            self._state, self._last_error = "ok", None
        return result

    def _fail(self, doing: str, error: BaseException, housekeeping: bool = False) -> SpoolError:
        """Translate a redis-py error into ours, and remember it for stats()."""
        errors = self._errors
        reason = self._scrub(_reason(error)) or type(error).__name__
        failure: SpoolError
        if isinstance(error, (errors.AuthenticationError, errors.AuthorizationError)):
            failure = SpoolError(f"Redis spool {self.description}: {doing} failed: authentication refused: {reason}")
        elif isinstance(error, (errors.ConnectionError, errors.TimeoutError, OSError, errors.ChildDeadlockedError)):
            failure = SpoolUnavailableError(f"Redis spool {self.description}: {doing} failed: "
                                            f"Redis cannot be reached: {reason}")
        elif isinstance(error, errors.ResponseError) and reason.split(" ", 1)[0] in _UNAVAILABLE_REPLIES:
            failure = SpoolUnavailableError(f"Redis spool {self.description}: {doing} failed: "
                                            f"Redis cannot take it now: {reason}")
        elif isinstance(error, errors.NoPermissionError):
            failure = SpoolError(f"Redis spool {self.description}: {doing} failed: not permitted by the "
                                 f"user's ACL: {reason}")
        elif reason.startswith("WRONGTYPE"):
            failure = SpoolError(f"Redis spool {self.description}: {doing} failed: key {self.stream!r} "
                                 f"exists and is not a stream: {reason}")
        else:
            failure = SpoolError(f"Redis spool {self.description}: {doing} failed: {reason}")
        with self._lock:
            if housekeeping:
                self._housekeeping_error = str(failure)
            else:
                self._state = "unavailable" if isinstance(failure, SpoolUnavailableError) else "error"
                self._last_error = str(failure)
        return failure

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message.replace("\n", " ")

    def after_fork_in_child(self) -> None:
        """Become a new member in a forked child: a new consumer name, nothing held, the
        parent's lock replaced. redis-py opens new connections in the child by itself. Runs
        automatically in every child of ``os.fork()``; idempotent. Does not block."""
        if os.getpid() == self._pid:
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self.consumer = f"{self.consumer}-{self._pid}" if self._consumer_given else generated_consumer_name()
        self._held = set()
        self._ack_later = set()
        self._backlog_from = None
        self._autoclaim_cursor = "0-0"

    def __enter__(self) -> RedisStreamSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisStreamSpool({self.description!r}, consumer={self.consumer!r})"


def _after_fork_in_child() -> None:
    for spool in list(_OPEN_SPOOLS):
        spool.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
