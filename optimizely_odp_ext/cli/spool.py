"""``optimizely-odp spool stats|replay|purge``: work on the SQLite spool of undelivered events."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from optimizely_odp_ext.cli import spool_redis
from optimizely_odp_ext.cli.common import (
    DEFAULT_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    plural,
    positive_float,
    positive_int,
)
from optimizely_odp_ext.cli.progress import add_progress_argument
from optimizely_odp_ext.cli.replay import Replay
from optimizely_odp_ext.integration import mask_key
from optimizely_odp_ext.settings import SETTINGS_BY_NAME
from optimizely_odp_ext.transport import Transport

if TYPE_CHECKING:
    from optimizely_odp_ext.spool import SqliteSpool

MAX_BATCH_EVENTS = int(SETTINGS_BY_NAME["batch_size"].maximum or 500)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
    spool = commands.add_parser("spool", parents=[verbose], help="inspect, replay or purge an event spool",
                                description="Work on a spool of accepted-but-undelivered events: a SQLite "
                                "file (the spool_path setting) or a fleet's Redis stream (spool_url).")
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="SPOOL_COMMAND", required=True)
    stats = spool_commands.add_parser("stats", parents=[verbose], help="count the events in a spool "
                                      "(read-only; safe beside a running application)")
    stats.add_argument("path", metavar="PATH")
    stats.add_argument("--json", action="store_true", help="print the stats as one JSON object")
    stats.set_defaults(handler=run_stats)
    replay = spool_commands.add_parser("replay", parents=[verbose], help="send the spooled events to their "
                                       "ODP host, deleting each batch ODP acknowledges")
    replay.add_argument("path", metavar="PATH")
    replay.add_argument("--batch-size", type=_batch_size, default=MAX_BATCH_EVENTS, metavar="N",
                        help="events per request, 1 to 500 (default %(default)s)")
    replay.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="seconds to wait for each answer (default %(default)s)")
    add_progress_argument(replay)
    replay.set_defaults(handler=run_replay)
    purge = spool_commands.add_parser("purge", parents=[verbose], help="delete every event in a spool")
    purge.add_argument("path", metavar="PATH")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=run_purge)
    spool_redis.add_arguments(spool_commands)  # a redis:// URL instead of a PATH: cli/spool_redis.py


def _batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH_EVENTS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH_EVENTS} (ODP's limit), not {value}")
    return value


def _check_path(path: str) -> None:
    """A one-line error unless ``path`` is a regular file."""
    if os.path.isdir(path):
        raise CliError(f"spool {path} is a directory, not a spool file")
    if not os.path.exists(path):
        raise CliError(f"spool {path} does not exist")
    if not os.path.isfile(path):
        raise CliError(f"spool {path} is not a regular file")


def _open_spool(path: str) -> SqliteSpool:
    """Open a spool to change it. It is inspected read-only first, so a file that is not a
    spool (or is damaged) is reported as it is: not locked, not changed, no ``.lock`` left."""
    from optimizely_odp_ext.spool import SpoolError, SqliteSpool

    _check_path(path)
    try:
        SqliteSpool.inspect(path)
    except SpoolError as error:
        raise CliError(str(error)) from None
    lock_path = path + ".lock"
    had_lock_file = os.path.exists(lock_path)
    try:
        return SqliteSpool(path)
    except SpoolError as error:
        if not had_lock_file and "in use by another process" not in str(error):
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        raise CliError(str(error)) from None


# ---------------------------------------------------------------------------- stats


def run_stats(args: argparse.Namespace) -> int:
    """Print the spool's counts, without taking its lock. Blocks briefly."""
    from optimizely_odp_ext.spool import SpoolError, SqliteSpool

    _check_path(args.path)
    try:
        stats = SqliteSpool.inspect(args.path)
    except SpoolError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(stats))
        return EXIT_OK
    print(f"spool:      {stats['path']}")
    print(f"events:     {stats['events']:,} ({stats['bytes']:,} bytes of JSON)")
    now = time.time()
    for name in ("oldest", "newest"):
        when = stats[f"{name}_accepted_at"]
        print(f"{name}:     {'-' if when is None else _when(when, now)}")
    print(f"file size:  {stats['file_bytes']:,} bytes")
    return EXIT_OK


def _when(timestamp: float, now: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
    age = max(0.0, now - timestamp)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= seconds:
            return f"{moment} ({age / seconds:.1f}{unit} ago)"
    return f"{moment} ({age:.0f}s ago)"


# ---------------------------------------------------------------------------- purge


def run_purge(args: argparse.Namespace) -> int:
    """Delete every event, after asking on a terminal unless ``--yes``. Blocks."""
    spool = _open_spool(args.path)
    try:
        count = spool.count()
        if count and not args.yes:
            if not sys.stdin.isatty():
                raise CliError(f"refusing to delete {plural(count, 'event')} without --yes", EXIT_USAGE)
            try:
                answer = input(f"Delete {plural(count, 'undelivered event')} from {args.path}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILED
        deleted = spool.purge()
    finally:
        spool.close()
    print(f"purged {plural(deleted, 'event')} from {args.path}")
    return EXIT_OK


# ---------------------------------------------------------------------------- replay


def run_replay(args: argparse.Namespace) -> int:
    """Send the spooled events; raises :class:`CliError` if any are left. Blocks."""
    spool = _open_spool(args.path)
    transport = Transport(args.timeout, pool_size=1)
    try:
        replay = Replay(spool, transport, args.batch_size, args.progress_interval)
        replay.run()
        left = spool.count()
    finally:
        transport.close()
        spool.close()
    if replay.total == 0:
        print(f"the spool {args.path} is empty: nothing to replay")
        return EXIT_OK
    print(f"replayed {args.path}: {replay.delivered:,} delivered, {replay.refused:,} refused by ODP (deleted), "
          f"{left:,} left in the spool")
    if left:
        why = "; ".join(f"{destination.host} (key {mask_key(destination.api_key)}): {reason}"
                        for destination, reason in replay.blocked.items())
        raise CliError(f"{plural(left, 'event')} not delivered" + (f": {why}" if why else ""))
    return EXIT_OK
