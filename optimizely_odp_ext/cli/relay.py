"""``optimizely-odp relay URL``: deliver the events a fleet appends to a Redis stream, as a service.

A relay is a member of the stream's consumer group that accepts no events of its own: a
``BatchEventManager(spool_url=URL, deliver=True)`` without a client. It claims entries
(each carries its ODP host and public key), delivers them, and acknowledges each once ODP
did. Any number of relays may run at once, beside application processes that deliver too
or only append (``deliver=False``).

- **Status**: one line on stderr every ``--status-every`` seconds: events delivered (and
  the rate since the last line), dropped, retries, what waits in the stream (and how much
  of it is claimed), the age of the oldest entry, and the spool's state. The stream's
  figures come from ``odp_stats()["spool"]``, read by a worker every 5 s.
- **Stopping**: SIGTERM or SIGINT (Ctrl-C) stops claiming and closes the manager within
  ``--drain-timeout``: what it holds is delivered or handed back to the fleet (any member
  takes it at once). A second signal stops at once (exit 130); what it held is then taken
  over by another member after ``claim_after``.
- **Exit codes**: 0 after a stop by signal; 1 when Redis refuses the relay for good (a
  wrong password, an ACL without a command it needs, the key holding something else than
  a stream: the spool's ``last_error_kind`` is ``refused``), with one line saying why; 2 for
  bad usage. A Redis that cannot be reached is not fatal: the relay keeps trying and its
  status line says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Callable

from optimizely_odp_ext.cli.common import EXIT_OK, EXIT_USAGE, PROG, CliError, StopRequest, plural, positive_float
from optimizely_odp_ext.cli.session import manager_arguments, resolve_settings
from optimizely_odp_ext.settings import SETTINGS, SettingError

DEFAULT_STATUS_EVERY = 60.0
DEFAULT_DRAIN_TIMEOUT = 30.0
WATCH_EVERY = 0.2
"""Seconds between two looks at the manager's state (for a fatal error) while running."""
_OWN_OPTIONS = {"spool_url": "URL", "spool_stream": "--stream", "spool_group": "--group",
                "claim_after": "--claim-after", "deliver": None, "spool_path": None}
"""Settings the relay sets itself (with the argument that does), not with --set."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
    relay = commands.add_parser(
        "relay", parents=[verbose], help="deliver the events a fleet appends to a Redis stream (a service)",
        description="Deliver the ODP events that application processes append to a shared Redis stream "
        "(spool_url), as a member of its consumer group, until SIGTERM or Ctrl-C. Many relays may run at "
        "once. Prints a status line on stderr now and then; exits 1 if Redis refuses it for good.",
        epilog="A URL with a password is visible to other users in the process list: prefer the "
        "OPTIMIZELY_ODP_SPOOL_URL environment variable.")
    relay.add_argument("url", metavar="URL", nargs="?",
                       help="redis://, rediss:// (TLS) or unix:// URL (default: $OPTIMIZELY_ODP_SPOOL_URL)")
    relay.add_argument("--stream", metavar="KEY", help="the stream's key (setting spool_stream; default "
                       "optimizely-odp:events)")
    relay.add_argument("--group", metavar="NAME", help="the consumer group (setting spool_group; default "
                       "optimizely-odp)")
    relay.add_argument("--claim-after", type=positive_float, metavar="SECONDS",
                       help="seconds before the entries of a silent member are taken over (default 60)")
    relay.add_argument("--consumer", metavar="NAME",
                       help="a stable name in the group, for a relay restarted under the same name (it then "
                       "delivers what it held before at once); never give two running relays one name "
                       "(default: host-pid-random, new in every run)")
    relay.add_argument("--status-every", type=positive_float, default=DEFAULT_STATUS_EVERY, metavar="SECONDS",
                       help="seconds between two status lines on stderr (default %(default)g)")
    relay.add_argument("--drain-timeout", type=_non_negative, default=DEFAULT_DRAIN_TIMEOUT, metavar="SECONDS",
                       help="on SIGTERM or Ctrl-C: seconds to finish the requests under way before what is "
                       "left is handed back to the fleet (default %(default)g)")
    relay.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                       help="an event manager setting (repeatable): " + ", ".join(
                           s.name for s in SETTINGS if s.name not in _OWN_OPTIONS))
    relay.set_defaults(handler=run)


def _non_negative(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def relay_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The manager's keyword arguments from the command line (``--set`` and the relay's own
    options), validated. Raises :class:`CliError` (usage) on a bad one."""
    arguments = manager_arguments(args.settings)
    for name in arguments:
        option = _OWN_OPTIONS.get(name, "")
        if name in _OWN_OPTIONS:
            raise CliError(f"--set {name} does not apply to a relay" + (f": use {option}" if option else ""),
                           EXIT_USAGE)
    own = {"spool_url": args.url, "spool_stream": args.stream, "spool_group": args.group,
           "claim_after": args.claim_after}
    arguments.update((name, value) for name, value in own.items() if value is not None)
    arguments["deliver"] = True
    settings = resolve_settings(arguments)
    if not settings.spool_url:
        raise CliError("give the Redis URL (redis://, rediss:// or unix://) or set OPTIMIZELY_ODP_SPOOL_URL",
                       EXIT_USAGE)
    arguments["spool_url"] = settings.spool_url
    return arguments


def open_relay(arguments: dict[str, Any], consumer: str | None, logger: Any) -> Any:
    """A started ``BatchEventManager`` delivering from the stream ``arguments`` name, as
    ``consumer``. Raises :class:`CliError` (usage) for a URL or setting it cannot take."""
    from optimizely_odp_ext.managers.batch import BatchEventManager
    from optimizely_odp_ext.settings import ManagerSettings
    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    try:
        settings = ManagerSettings.resolve(arguments)
        assert settings.spool_url is not None
        spool = RedisStreamSpool(settings.spool_url, stream=settings.spool_stream, group=settings.spool_group,
                                 consumer=consumer, claim_after=settings.claim_after)
        manager = BatchEventManager(spool=spool, **arguments)
    except SettingError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    manager.start(logger=logger, notification_center=None, integration=None)
    return manager


def make_logger(verbose: bool) -> logging.Logger:
    """The manager's logger: INFO and above on stderr (DEBUG with ``--verbose``), with a time stamp.
    Not in logging's registry: nothing global is configured."""
    logger = logging.Logger(f"{PROG} relay", logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def run(args: argparse.Namespace) -> int:
    """Deliver until SIGTERM or Ctrl-C (exit 0) or a fatal refusal by Redis (exit 1). Blocks."""
    arguments = relay_settings(args)
    logger = make_logger(bool(getattr(args, "verbose", False)))
    manager = open_relay(arguments, args.consumer, logger)
    spool = manager.stats()["spool"]
    who = f" as {args.consumer}" if args.consumer else ""
    say(f"relay: delivering from {spool['description']}{who}; SIGTERM or Ctrl-C stops it "
        f"(drain up to {args.drain_timeout:g}s)")
    watch = Watch(manager, args.status_every)
    with StopRequest() as stop:
        fatal = watch.run_until(stop.requested)
        if not fatal:
            say(f"relay: {stop.name or 'stop'} received: draining (up to {args.drain_timeout:g}s)")
        drained = manager.close(0.0 if fatal else args.drain_timeout)
    say("relay: stopped; " + watch.summary(manager.stats(), drained))
    if fatal:
        raise CliError(f"the spool refuses the relay: {fatal}")
    return EXIT_OK


def say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


class Watch:
    """The relay's main loop: looks for a fatal error, prints the status line."""

    def __init__(self, manager: Any, status_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.status_every = status_every
        self.clock = clock
        self.started = clock()
        self._last_at = self.started
        self._last_delivered = 0

    def run_until(self, stop: threading.Event) -> str:
        """Watch until ``stop`` is set or Redis refuses the relay for good (looked at every
        :data:`WATCH_EVERY` seconds); returns that refusal's message, or "". Blocks."""
        next_status = self.started + self.status_every
        while not stop.is_set():
            stats = self.manager.stats()
            fatal = fatal_error(stats)
            if fatal:
                return fatal
            now = self.clock()
            if now >= next_status:
                next_status = now + self.status_every
                say(self.status(stats))
            stop.wait(WATCH_EVERY)
        return ""

    def status(self, stats: dict[str, Any]) -> str:
        """The periodic line: delivered (rate), dropped, retries | the stream | the spool."""
        now = self.clock()
        delivered = int(stats.get("delivered", 0))
        rate = (delivered - self._last_delivered) / max(now - self._last_at, 1e-6)
        self._last_at, self._last_delivered = now, delivered
        return (f"relay: delivered {delivered:,} ({rate:,.0f}/s), dropped {stats.get('dropped_total', 0):,}, "
                f"retries {stats.get('retries', 0):,}, holding {holding(stats):,} | "
                f"{stream_figures(stats.get('spool') or {})} | {spool_state(stats.get('spool') or {})}")

    def summary(self, stats: dict[str, Any], drained: bool) -> str:
        dropped = stats.get("dropped") or {}
        why = ", ".join(f"{count:,} {reason}" for reason, count in sorted(dropped.items()))
        line = (f"delivered {plural(int(stats.get('delivered', 0)), 'event')} in "
                f"{self.clock() - self.started:,.0f}s, dropped {stats.get('dropped_total', 0):,}"
                + (f" ({why})" if why else ""))
        released = int(stats.get("released", 0))
        if released:
            line += f", handed {plural(released, 'event')} back to the fleet"
        return line + ("" if drained or released else ", some requests were still under way")


def holding(stats: dict[str, Any]) -> int:
    """Claimed events this relay holds: waiting for their batch, ready, or in a request."""
    return int(stats.get("queued", 0)) + int(stats.get("in_flight", 0))


def stream_figures(spool: dict[str, Any]) -> str:
    events, pending, oldest = spool.get("events"), spool.get("pending"), spool.get("oldest_event_age")
    if events is None:
        return "stream: figures unknown"
    line = f"stream: {events:,} waiting"
    if pending:
        line += f" ({pending:,} claimed)"
    if oldest is not None:
        line += f", oldest {_age(oldest)}"
    return line


def spool_state(spool: dict[str, Any]) -> str:
    state = str(spool.get("state", "?"))
    if state != "failing":
        return f"spool {state}"
    kind = spool.get("last_error_kind") or "failing"
    since = spool.get("since")
    how_long = f" for {_age(time.time() - since)}" if isinstance(since, (int, float)) else ""
    return f"spool {kind}{how_long} ({spool.get('failures', 0):,} failed calls; retrying): {spool.get('last_error')}"


def fatal_error(stats: dict[str, Any]) -> str:
    """The spool's last error when Redis refuses for good (``last_error_kind`` ``refused``), else ""."""
    spool = stats.get("spool") or {}
    if spool.get("state") == "failing" and spool.get("last_error_kind") == "refused":
        return str(spool.get("last_error") or "refused")
    return ""


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"
