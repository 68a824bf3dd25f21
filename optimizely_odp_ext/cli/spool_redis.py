"""``optimizely-odp spool stats|replay|purge URL`` for a Redis stream a fleet shares, and the
spool line of ``doctor`` when ``spool_url`` is set.

``cli/spool.py`` hands a ``redis://``, ``rediss://`` or ``unix://`` URL to this module
(:func:`add_arguments` wraps its handlers); a path stays with the SQLite commands.

- **stats** (read-only, safe beside a running fleet): the stream's length, how much of it is
  claimed, the age of the oldest entry and of the oldest claimed one, every member of the
  consumer group with what it holds and how long it has been idle, and where the oldest
  ``--sample`` entries go (ODP host and masked public key). Cost on Redis: ``XLEN``, ``XINFO
  GROUPS``, ``XPENDING`` (summary), ``XRANGE … COUNT 1``, ``TIME`` and ``XINFO CONSUMERS`` (O(1)
  apart from the number of members), plus ``XRANGE`` pages of 1,000 entries for the sample:
  O(sample), about 400 bytes an entry over the network.
- **replay**: runs a relay (a ``BatchEventManager`` in the group) until every entry that was
  in the stream when it started is resolved by the fleet, as ``flush()`` would tell
  (``delivered_up_to`` the newest entry); entries another live member holds are left to it,
  those of a dead member are taken over after ``--claim-after``. It gives up when ODP keeps
  failing (:data:`REPLAY_RETRIES` failed requests in a row with nothing delivered) and hands
  back what it holds; exit 1 then.
- **purge**: deletes the stream and its group after a confirmation (``--yes`` without a
  terminal), like the SQLite one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from optimizely_odp_ext.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    StopRequest,
    plural,
    positive_float,
    positive_int,
)
from optimizely_odp_ext.cli.progress import Progress
from optimizely_odp_ext.cli.relay import fatal_error, make_logger, say, stream_figures
from optimizely_odp_ext.integration import mask_key
from optimizely_odp_ext.settings import SETTINGS_BY_NAME, SettingError
from optimizely_odp_ext.spool.urls import mask_url

if TYPE_CHECKING:
    from optimizely_odp_ext.cli.session import Session
    from optimizely_odp_ext.settings import ManagerSettings
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

URL_SCHEMES = ("redis://", "rediss://", "unix://")
SPOOL_URL_VARIABLE = SETTINGS_BY_NAME["spool_url"].env_var
FROM_ENVIRONMENT = "$" + SPOOL_URL_VARIABLE
"""The PATH that stands for the URL in that variable (quoted on the command line)."""
DEFAULT_SAMPLE = 1000
MAX_CONSUMERS_SHOWN = 20
REPLAY_RETRIES = 3
"""replay gives up after this many failed requests in a row (none delivered in between)."""
REPLAY_POLL = 0.2
DEFAULT_PROGRESS_INTERVAL = 5.0
CLOSE_TIMEOUT = 10.0
"""Seconds replay waits, once done or giving up, for its requests under way."""
DOCTOR_TIMEOUT = 3.0
"""Seconds doctor waits for Redis to answer (each connect, each reply)."""


def is_redis_url(text: str) -> bool:
    """Whether a ``spool`` command's PATH argument is a Redis URL (``redis://``, ``rediss://``, ``unix://``)."""
    return text.lower().startswith(URL_SCHEMES)


def add_arguments(spool_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Teach ``spool stats|replay|purge`` the Redis options, and send a URL here instead of to the
    SQLite handler each of them has already (``set_defaults(handler=…)``)."""
    redis_handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "stats": run_stats, "replay": run_replay, "purge": run_purge}
    for name, redis_handler in redis_handlers.items():
        parser = spool_commands.choices[name]
        group = parser.add_argument_group("with a redis://, rediss:// or unix:// URL instead of a PATH")
        group.add_argument("--stream", metavar="KEY", help="the stream's key (default: $OPTIMIZELY_ODP_SPOOL_STREAM "
                           "or optimizely-odp:events)")
        group.add_argument("--group", metavar="NAME", help="the consumer group (default: "
                           "$OPTIMIZELY_ODP_SPOOL_GROUP or optimizely-odp)")
        if name == "stats":
            group.add_argument("--sample", type=positive_int, default=DEFAULT_SAMPLE, metavar="N",
                               help="count destinations over the oldest N entries (default %(default)s)")
        if name == "replay":
            group.add_argument("--claim-after", type=positive_float, metavar="SECONDS",
                               help="take over entries a member left untouched this long (default: "
                               "$OPTIMIZELY_ODP_CLAIM_AFTER or 60); below the fleet's own value it takes "
                               "entries live members are still sending: duplicates")
        parser.epilog = ("PATH may be a redis://, rediss:// or unix:// URL of the Redis stream a fleet shares "
                         "(spool_url). A password in it is visible in the process list: give "
                         f"'{FROM_ENVIRONMENT}' (quoted, so the shell leaves it) to read the URL from there.")
        parser.set_defaults(handler=_dispatch(parser.get_default("handler"), redis_handler))


def _dispatch(local: Callable[[argparse.Namespace], int],
              redis: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        if args.path == FROM_ENVIRONMENT:
            args.path = os.environ.get(SPOOL_URL_VARIABLE, "")
            if not args.path:
                raise CliError(f"{SPOOL_URL_VARIABLE} is not set", EXIT_USAGE)
        if is_redis_url(args.path):
            return redis(args)
        given = [option for option, value in (("--stream", args.stream), ("--group", args.group),
                                              ("--claim-after", getattr(args, "claim_after", None)))
                 if value is not None]
        if given:
            raise CliError(f"{', '.join(given)}: only with a redis://, rediss:// or unix:// URL", EXIT_USAGE)
        return local(args)

    return handler


def _setting(name: str, given: Any) -> Any:
    """``given``, else the setting's environment variable, else its default."""
    setting = SETTINGS_BY_NAME[name]
    if given is not None:
        return given
    text = os.environ.get(setting.env_var)
    if text is None:
        return setting.default
    try:
        return setting.parse(text)
    except ValueError as error:
        raise CliError(f"environment variable {setting.env_var}={text!r} is not valid: {error}", EXIT_USAGE) from None


def _open(args: argparse.Namespace, **options: Any) -> RedisStreamSpool:
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    try:
        return RedisStreamSpool(args.path, stream=_setting("spool_stream", args.stream),
                                group=_setting("spool_group", args.group), **options)
    except SettingError as error:
        raise CliError(str(error), EXIT_USAGE) from None


def _where(spool: RedisStreamSpool) -> str:
    return f"{spool.masked_url} stream {spool.stream}"


# ---------------------------------------------------------------------------- stats


def run_stats(args: argparse.Namespace) -> int:
    """Print what the stream holds (read-only). Blocks for a few round trips."""
    from optimizely_odp_ext.spool import SpoolError

    spool = _open(args)
    try:
        figures = spool.stats()
        if figures["state"] != "ok":
            raise CliError(str(figures["last_error"]))
        try:
            consumers = spool.consumers()
            sampled, destinations = spool.destinations(args.sample)
        except SpoolError as error:
            raise CliError(str(error)) from None
    finally:
        spool.close()
    report = {
        "url": spool.masked_url, "stream": spool.stream, "group": spool.group,
        **{name: figures[name] for name in ("events", "pending", "unread", "oldest_event_age", "oldest_pending_age",
                                            "memory_bytes")},
        "consumers": consumers,
        "destinations_sampled": sampled,
        "destinations": [{"host": host, "key": mask_key(key) if key else "", "events": count}
                         for (host, key), count in sorted(destinations.items(), key=lambda item: -item[1])],
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    unread = "" if figures["unread"] is None else f", {figures['unread']:,} not claimed yet"
    print(f"spool:      {report['url']} stream={spool.stream} group={spool.group}")
    print(f"events:     {figures['events']:,} waiting ({figures['pending']:,} claimed{unread})")
    print(f"oldest:     {_age(figures['oldest_event_age'])}")
    print(f"oldest claimed: {_age(figures['oldest_pending_age'])}")
    memory = figures["memory_bytes"]
    print(f"memory:     {'-' if memory is None else f'{memory:,} bytes in Redis (MEMORY USAGE, an estimate)'}")
    print(f"members:    {len(consumers):,}")
    for row in consumers[:MAX_CONSUMERS_SHOWN]:
        print(f"  {row['name']}: holds {row['pending']:,}, idle {row['idle']:,.1f}s")
    if len(consumers) > MAX_CONSUMERS_SHOWN:
        print(f"  ... and {len(consumers) - MAX_CONSUMERS_SHOWN:,} more (--json lists them all)")
    of = f"the oldest {sampled:,}" if sampled < (figures["events"] or 0) else f"all {sampled:,}"
    print(f"destinations ({of} entries):" if sampled else "destinations: -")
    for row in report["destinations"]:
        host = row["host"] or "(not an ODP event entry)"
        key = f" key {row['key']}" if row["key"] else ""
        print(f"  {host}{key}: {row['events']:,}")
    return EXIT_OK


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.1f}s ago"


# ---------------------------------------------------------------------------- purge


def run_purge(args: argparse.Namespace) -> int:
    """Delete the stream and its group, after asking on a terminal unless ``--yes``. Blocks."""
    from optimizely_odp_ext.spool import SpoolError

    spool = _open(args)
    try:
        figures = spool.stats()
        if figures["state"] != "ok":
            raise CliError(str(figures["last_error"]))
        count = int(figures["events"] or 0)
        if count and not args.yes:
            if not sys.stdin.isatty():
                raise CliError(f"refusing to delete {plural(count, 'event')} without --yes", EXIT_USAGE)
            try:
                answer = input(f"Delete {plural(count, 'undelivered event')} from {_where(spool)}, and its "
                               f"consumer group {spool.group}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILED
        try:
            deleted = spool.purge()
        except SpoolError as error:
            raise CliError(str(error)) from None
    finally:
        spool.close()
    print(f"purged {plural(deleted, 'event')} from {_where(spool)}")
    return EXIT_OK


# ---------------------------------------------------------------------------- replay


def run_replay(args: argparse.Namespace) -> int:
    """Deliver every entry the stream holds now (see the module docstring). Blocks."""
    from optimizely_odp_ext.managers.batch import BatchEventManager
    from optimizely_odp_ext.spool import SpoolError, SpoolUnavailableError

    claim_after = _setting("claim_after", args.claim_after)
    spool = _open(args, claim_after=claim_after)
    try:
        target = spool.last_entry_id()
        total = int(spool.stats()["events"] or 0)
    except SpoolError as error:
        spool.close()
        raise CliError(str(error)) from None
    if target is None:
        spool.close()
        print(f"the stream {_where(spool)} is empty: nothing to replay")
        return EXIT_OK
    try:
        manager = BatchEventManager(spool=spool, deliver=True, batch_size=args.batch_size,
                                    request_timeout=args.timeout, claim_after=claim_after)
    except SettingError as error:
        spool.close()
        raise CliError(str(error), EXIT_USAGE) from None
    interval = getattr(args, "progress_interval", None)
    interval = DEFAULT_PROGRESS_INTERVAL if interval is None else interval  # 0: a line at every update
    say(f"replay: {plural(total, 'event')} in {_where(spool)}; delivering every entry up to {target}")
    manager.start(logger=make_logger(bool(getattr(args, "verbose", False))), notification_center=None,
                  integration=None)
    done, problem, interrupted = False, "", False
    progress = Progress("replay", total, interval=interval)  # a bar on a terminal (the [progress] extra)
    give_up = _GiveUpRule()
    with StopRequest() as stopping:
        while not stopping.requested.is_set():
            try:
                done = spool.delivered_up_to(target)
            except SpoolUnavailableError:
                done = False  # the status line says so; the manager keeps trying too
            except SpoolError as error:
                problem = str(error)
                break
            stats = manager.stats()
            _show(progress, stats)
            problem = fatal_error(stats) or give_up.stuck(stats)
            if done or problem:
                break
            stopping.requested.wait(REPLAY_POLL)
        interrupted = stopping.requested.is_set() and not done
        manager.close(CLOSE_TIMEOUT)
    stats = manager.stats()
    _show(progress, stats)
    progress.close()
    rejected = int((stats.get("dropped") or {}).get("rejected", 0))
    others = int(stats.get("dropped_total", 0)) - rejected
    try:
        left = _check_left(args)
    except CliError:
        left = "?"
    print(f"replayed {_where(spool)}: {stats['delivered']:,} delivered, {rejected:,} refused by ODP (deleted)"
          + (f", {others:,} given up" if others else "") + f", {left} in the stream now")
    if interrupted:
        raise CliError("interrupted; what this replay held is handed back to the fleet", EXIT_INTERRUPTED)
    if not done:
        raise CliError(f"not every entry up to {target} was delivered: {problem}")
    return EXIT_OK


def _check_left(args: argparse.Namespace) -> str:
    spool = _open(args)
    try:
        events = spool.stats()["events"]
    finally:
        spool.close()
    return "?" if events is None else f"{events:,}"


def _show(progress: Progress, stats: dict[str, Any]) -> None:
    """Bring the display up to the manager's counters: delivered, and given up (refused by ODP)."""
    progress.advance(delivered=int(stats["delivered"]) - progress.delivered,
                     failed=int(stats["dropped_total"]) - progress.failed)
    retries = int(stats.get("retries", 0))
    progress.set_status((f"{retries:,} retries | " if retries else "") + stream_figures(stats.get("spool") or {}))


class _GiveUpRule:
    """When replay gives up on ODP: after too many failed requests in a row."""

    def __init__(self) -> None:
        self._delivered = 0
        self._retries_then = 0

    def stuck(self, stats: dict[str, Any]) -> str:
        """Why replay should give up ("" if it should not): failed requests in a row."""
        delivered, retries = int(stats["delivered"]) + int(stats["dropped_total"]), int(stats.get("retries", 0))
        if delivered != self._delivered:
            self._delivered, self._retries_then = delivered, retries
        if retries - self._retries_then >= REPLAY_RETRIES:
            spool = stats.get("spool") or {}
            return (f"ODP failed {plural(retries - self._retries_then, 'request')} in a row; "
                    f"{stats['queued'] + stats['in_flight']:,} events held were handed back"
                    + (f" (spool: {spool.get('last_error')})" if spool.get("state") == "failing" else ""))
        return ""


# ---------------------------------------------------------------------------- doctor


def doctor_check(settings: ManagerSettings, session: Session | None, warnings: list[str]) -> tuple[str, bool]:
    """``doctor``'s spool line when ``spool_url`` is set ("" otherwise), and whether the spool is
    unusable (then its error is added to ``warnings``). Asks Redis itself (one round trip of
    cheap commands, each bounded by :data:`DOCTOR_TIMEOUT`), as the manager of a client that
    just started may not have yet; a failing state in the session's client's
    ``odp_stats()["spool"]`` counts too. Never raises."""
    if not settings.spool_url:
        return "", False
    manager_spool = session.client.odp_stats().get("spool") if session is not None else None
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    try:
        spool = RedisStreamSpool(settings.spool_url, stream=settings.spool_stream, group=settings.spool_group,
                                 claim_after=settings.claim_after, socket_timeout=DOCTOR_TIMEOUT,
                                 connect_timeout=DOCTOR_TIMEOUT)
    except SettingError as error:
        warnings.append(str(error))
        return f"{mask_url(settings.spool_url)} (cannot be used)", True
    try:
        figures = spool.stats()
    finally:
        spool.close()
    if figures["state"] != "ok":
        warnings.append(str(figures["last_error"]))
        return f"{spool.description} ({figures['state']})", True
    if manager_spool and manager_spool.get("state") == "failing":
        warnings.append(str(manager_spool.get("last_error")))
        return f"{spool.description} (failing)", True
    oldest = figures["oldest_event_age"]
    return (f"{spool.description} (ok: {plural(int(figures['events'] or 0), 'event')} waiting, "
            f"{figures['pending'] or 0:,} claimed" + ("" if oldest is None else f", oldest {oldest:,.1f}s") + ")",
            False)
