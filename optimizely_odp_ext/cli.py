"""The ``optimizely-odp`` command: send an event, check a setup, run a local collector, manage a spool.

Usage::

    optimizely-odp [-v] send ACTION SOURCE --id KEY=VALUE [--id ...] [--type TYPE]
                   [--data KEY=VALUE ...] [--data-json JSON] [--set NAME=VALUE ...] [--timeout S]
    optimizely-odp [-v] doctor [SOURCE] [--odp-disabled] [--set NAME=VALUE ...]
                   [--send-test-event] [--timeout S]
    optimizely-odp collector [--port N] [--api-key KEY] [--jsonl FILE] [--quiet]
                   [--max-events N] [--exit-after S]
    optimizely-odp spool stats PATH [--json]
    optimizely-odp spool replay PATH [--batch-size N] [--timeout S]
    optimizely-odp spool purge PATH [--yes]

    SOURCE: --datafile PATH | --sdk-key KEY [--datafile-url URL] | --datafile-url URL
            | --host URL --api-key KEY (send only: one request straight to that host)

Exit codes: 0 success; 1 the operation failed (event not delivered, ODP not usable,
events left in the spool); 2 bad usage or input; 70 internal error; 130 interrupted.
Errors are one line on stderr, ``optimizely-odp: error: ...``; ``--verbose`` adds the
SDK's DEBUG log (and a traceback for an internal error) on stderr.

``send`` and ``doctor`` build an :class:`~optimizely_odp_ext.OdpOptimizely` exactly as an
application would (the datafile from a file, or polled with an SDK key), with an event
dispatcher that keeps the base SDK's own events in memory. Every command blocks until it
is done; ``collector`` runs in the foreground until Ctrl-C, SIGTERM, ``--max-events`` or
``--exit-after``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, Callable, NoReturn

from optimizely.config_manager import PollingConfigManager
from optimizely.helpers import enums

from optimizely_odp_ext import __version__, compat
from optimizely_odp_ext.client import OdpOptimizely
from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE, InvalidEventError, Scalar, build_event
from optimizely_odp_ext.integration import IntegrationState, OdpIntegration, mask_key
from optimizely_odp_ext.managers.batch import BatchEventManager
from optimizely_odp_ext.notifications import (
    ODP_BATCH_DELIVERED,
    ODP_BATCH_FAILED,
    ODP_EVENTS_DROPPED,
    OdpNotificationCenter,
)
from optimizely_odp_ext.result import SendResult
from optimizely_odp_ext.retry import backoff_delay
from optimizely_odp_ext.settings import (
    ENV_PREFIX,
    SETTINGS,
    SETTINGS_BY_NAME,
    ManagerSettings,
    SettingError,
    odp_disabled_by_environment,
)
from optimizely_odp_ext.transport import Outcome, OutcomeKind, Transport

if TYPE_CHECKING:
    from optimizely_odp_ext.spool import SpooledEvent, SqliteSpool

PROG = "optimizely-odp"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
DEFAULT_TIMEOUT = 10.0
DOCTOR_ACTION = "doctor_test"
DOCTOR_IDENTIFIERS = {"fs_user_id": "optimizely-odp-doctor"}
REPLAY_RETRIES = 3
REPLAY_MAX_BACKOFF = 30.0
REPLAY_PROGRESS_EVERY = 1000
"""Replay progress goes to stderr every 1,000 events or every 5%, whichever is rarer."""
MAX_BATCH_EVENTS = int(SETTINGS_BY_NAME["batch_size"].maximum or 500)
MAX_BATCH_BYTES = int(SETTINGS_BY_NAME["max_batch_bytes"].default)


class CliError(Exception):
    """An expected failure: reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Blocks until the command is done. Never raises (``--help`` and ``--version`` return 0).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in arguments or "--verbose" in arguments
    try:
        args = build_parser().parse_args(arguments)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except CliError as error:
        _error(str(error))
        return error.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except SystemExit as exit:  # argparse's --help and --version
        return exit.code if isinstance(exit.code, int) else EXIT_OK if exit.code is None else EXIT_USAGE
    except Exception as error:  # the last resort: never a traceback unless asked for
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with --verbose for the traceback)"
        _error(f"internal error: {type(error).__name__}: {error}{hint}")
        return EXIT_INTERNAL
    finally:
        _flush_stdout()


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # a reader that went away (| head), or a closed stream
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


# ---------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (via :class:`CliError`)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line; each subcommand sets ``handler``."""
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log the SDK at DEBUG level to stderr")
    parser = _Parser(prog=PROG, description="Send, check and collect Optimizely Data Platform (ODP) events.",
                     epilog="Exit codes: 0 success, 1 failed, 2 bad usage or input, 70 internal error.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the SDK at DEBUG level to stderr")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} (optimizely-sdk {compat.SDK_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    send = commands.add_parser("send", parents=[verbose], help="send one ODP event and report its delivery",
                               description="Send one ODP event through OdpOptimizely (or, with --host, "
                               "one request straight to that host), wait for ODP's answer and report it.")
    send.add_argument("action", metavar="ACTION", help="the event's action, e.g. purchase")
    send.add_argument("--type", default=DEFAULT_EVENT_TYPE, help="the event type (default %(default)s)")
    send.add_argument("--id", dest="ids", action="append", default=[], metavar="KEY=VALUE",
                      help="an identifier, e.g. fs_user_id=user-123 (at least one; repeatable)")
    send.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                      help="a data field; the value is read as JSON when it is true, false, null, a number "
                      "or a quoted string, else taken as text (repeatable; wins over --data-json)")
    send.add_argument("--data-json", metavar="JSON", help="data fields as one JSON object")
    _add_source_arguments(send, allow_host=True)
    _add_client_arguments(send)
    send.set_defaults(handler=_cmd_send)

    doctor = commands.add_parser("doctor", parents=[verbose], help="report the ODP setup a datafile gives",
                                 description="Load the datafile as OdpOptimizely would and report the ODP "
                                 "integration, the event manager settings in force and what looks wrong. "
                                 "Exits 1 unless ODP events would be delivered.")
    _add_source_arguments(doctor, allow_host=False)
    _add_client_arguments(doctor)
    doctor.add_argument("--odp-disabled", action="store_true",
                        help="check as if the application passed OdpOptimizely(odp_disabled=True)")
    doctor.add_argument("--send-test-event", action="store_true",
                        help=f"send one event (action {DOCTOR_ACTION}, identifier fs_user_id="
                        f"{DOCTOR_IDENTIFIERS['fs_user_id']}) and report its delivery")
    doctor.set_defaults(handler=_cmd_doctor)

    collector = commands.add_parser("collector", parents=[verbose], help="run a local ODP collector",
                                    description="Serve an ODP-compatible POST /v3/events on 127.0.0.1 in the "
                                    "foreground; print each accepted event as one JSON line on stdout (the "
                                    "URL and a summary go to stderr). Stops on Ctrl-C or SIGTERM.")
    collector.add_argument("--port", type=_port, default=0, help="the port (default: a free one)")
    collector.add_argument("--api-key", help="the only x-api-key accepted (default: any key)")
    collector.add_argument("--jsonl", metavar="FILE", help="also append each event to FILE as a JSON line")
    collector.add_argument("--quiet", action="store_true", help="do not print the events on stdout")
    collector.add_argument("--max-events", type=_positive_int, metavar="N", help="stop after N events")
    collector.add_argument("--exit-after", type=_positive_float, metavar="SECONDS",
                           help="stop after SECONDS")
    collector.set_defaults(handler=_cmd_collector)

    spool = commands.add_parser("spool", parents=[verbose], help="inspect, replay or purge an event spool",
                                description="Work on the SQLite spool of accepted-but-undelivered events "
                                "(the spool_path setting).")
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="SPOOL_COMMAND", required=True)
    stats = spool_commands.add_parser("stats", parents=[verbose], help="count the events in a spool "
                                      "(read-only; safe beside a running application)")
    stats.add_argument("path", metavar="PATH")
    stats.add_argument("--json", action="store_true", help="print the stats as one JSON object")
    stats.set_defaults(handler=_cmd_spool_stats)
    replay = spool_commands.add_parser("replay", parents=[verbose], help="send the spooled events to their "
                                       "ODP host, deleting each batch ODP acknowledges")
    replay.add_argument("path", metavar="PATH")
    replay.add_argument("--batch-size", type=_batch_size, default=MAX_BATCH_EVENTS,
                        help="events per request, 1 to 500 (default %(default)s)")
    replay.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for each answer (default %(default)s)")
    replay.set_defaults(handler=_cmd_spool_replay)
    purge = spool_commands.add_parser("purge", parents=[verbose], help="delete every event in a spool")
    purge.add_argument("path", metavar="PATH")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=_cmd_spool_purge)
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser, allow_host: bool) -> None:
    group = parser.add_argument_group("where the ODP integration comes from")
    group.add_argument("--datafile", metavar="PATH", help="a datafile (JSON) on disk")
    group.add_argument("--sdk-key", metavar="KEY", help="fetch the datafile for this SDK key, as the SDK does")
    group.add_argument("--datafile-url", metavar="URL", help="fetch the datafile from this URL instead of "
                       "Optimizely's CDN")
    if allow_host:
        group.add_argument("--host", metavar="URL", help="send straight to this ODP host (no datafile)")
        group.add_argument("--api-key", metavar="KEY", help="the ODP public API key for --host")


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="an event manager setting, as an argument to the client (repeatable): "
                        + ", ".join(setting.name for setting in SETTINGS))
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the datafile, and then for delivery (default %(default)s)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH_EVENTS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH_EVENTS} (ODP's limit), not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def _pairs(texts: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise CliError(f"{option} expects KEY=VALUE, not {text!r}", EXIT_USAGE)
        pairs.append((key, value))
    return pairs


def parse_value(text: str) -> Scalar:
    """A ``--data`` value: JSON ``true``/``false``/``null``, a finite number or a quoted
    string when it is one, else the text itself (``007`` and ``NaN`` stay text)."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def _not_json(name: str) -> NoReturn:
    raise ValueError(name)


def _event_data(args: argparse.Namespace) -> dict[str, Any] | None:
    data: dict[str, Any] = {}
    if args.data_json is not None:
        try:
            parsed = json.loads(args.data_json, parse_constant=_not_json)
        except ValueError as error:
            raise CliError(f"--data-json is not valid JSON: {error}", EXIT_USAGE) from None
        if not isinstance(parsed, dict):
            raise CliError(f"--data-json must be a JSON object, not {type(parsed).__name__}", EXIT_USAGE)
        data.update(parsed)
    data.update((key, parse_value(value)) for key, value in _pairs(args.data, "--data"))
    return data or None


def _manager_arguments(texts: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` as the keyword arguments of ``BatchEventManager``, validated."""
    arguments: dict[str, Any] = {}
    for name, text in _pairs(texts, "--set"):
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise CliError(f"--set: unknown setting {name!r} (one of {', '.join(SETTINGS_BY_NAME)})", EXIT_USAGE)
        try:
            arguments[name] = setting.parse(text)
        except ValueError as error:
            raise CliError(f"--set {name}={text!r} is not valid: {error}", EXIT_USAGE) from None
    return arguments


def _resolve_settings(arguments: dict[str, Any]) -> ManagerSettings:
    try:
        return ManagerSettings.resolve(arguments)
    except SettingError as error:
        raise CliError(str(error), EXIT_USAGE) from None


# ---------------------------------------------------------------------------- the SDK's log


class _RecentMessages(logging.Handler):
    """Keeps the SDK's last warnings and errors, to explain a failure in one line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: deque[tuple[int, str]] = deque(maxlen=50)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append((record.levelno, record.getMessage()))
        except Exception:
            self.handleError(record)

    def last(self, level: int = logging.ERROR, since: int = 0) -> str:
        """The latest message at ``level`` or above after the first ``since`` kept, or ""."""
        for levelno, message in reversed(list(self.messages)[since:]):
            if levelno >= level:
                return message
        return ""


def _sdk_logger(verbose: bool) -> tuple[logging.Logger, _RecentMessages]:
    """A logger for the SDK that is not in logging's registry (nothing global is configured)."""
    logger = logging.Logger(PROG, logging.DEBUG if verbose else logging.WARNING)
    recent = _RecentMessages()
    logger.addHandler(recent)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger, recent


# ---------------------------------------------------------------------------- the client


class _LocalDispatcher:
    """The base SDK's ``event_dispatcher``: impression and conversion events stay here."""

    def dispatch_event(self, event: Any) -> None:
        """Drop the event. Non-blocking."""


class _Session:
    """An ``OdpOptimizely`` built from the command line's source, and what it said."""

    def __init__(self, args: argparse.Namespace, *, odp_disabled: bool = False) -> None:
        self.timeout: float = args.timeout
        self.logger, self.recent = _sdk_logger(bool(getattr(args, "verbose", False)))
        self.manager_arguments = _manager_arguments(args.settings)
        self.settings = _resolve_settings(self.manager_arguments)
        self.label, datafile = _source(args)
        self.center = OdpNotificationCenter(self.logger)
        options: dict[str, Any] = {
            "event_dispatcher": _LocalDispatcher(), "logger": self.logger, "notification_center": self.center,
            "odp_event_manager": BatchEventManager(**self.manager_arguments), "odp_disabled": odp_disabled,
        }
        if datafile is not None:
            self.client = OdpOptimizely(datafile=datafile, **options)
        else:
            config_manager = PollingConfigManager(sdk_key=args.sdk_key, url=args.datafile_url, logger=self.logger,
                                                  notification_center=self.center)
            self.client = OdpOptimizely(sdk_key=args.sdk_key, config_manager=config_manager, **options)

    def wait_for_datafile(self) -> Any:
        """The client's ProjectConfig once there is one, or None after ``timeout``. Blocks."""
        ready = threading.Event()
        self.center.add_notification_listener(enums.NotificationTypes.OPTIMIZELY_CONFIG_UPDATE, ready.set)
        config = compat.current_project_config(self.client.config_manager)
        if config is None and isinstance(self.client.config_manager, PollingConfigManager):
            ready.wait(self.timeout)
            config = compat.current_project_config(self.client.config_manager)
        return config

    def require_datafile(self) -> Any:
        config = self.wait_for_datafile()
        if config is None:
            raise CliError(self.no_datafile_message())
        return config

    def no_datafile_message(self) -> str:
        reason = self.recent.last()
        if isinstance(self.client.config_manager, PollingConfigManager):
            return f"no datafile from {self.label} within {self.timeout:g}s" + (f": {reason}" if reason else "")
        return f"{self.label} is not a valid datafile" + (f": {reason}" if reason else "")

    def close(self) -> None:
        """Stop the client; what is still undelivered was reported already. Blocks briefly."""
        self.client.close(timeout=0)


def _source(args: argparse.Namespace) -> tuple[str, str | None]:
    """A label for the datafile's source, and the datafile's JSON when it is a file."""
    if args.datafile is not None:
        if args.sdk_key is not None or args.datafile_url is not None:
            raise CliError("--datafile cannot be combined with --sdk-key or --datafile-url", EXIT_USAGE)
        try:
            with open(args.datafile, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else str(error)
            raise CliError(f"cannot read the datafile {args.datafile}: {reason}", EXIT_USAGE) from None
        try:
            parsed = json.loads(text)
        except ValueError as error:
            raise CliError(f"the datafile {args.datafile} is not valid JSON: {error}", EXIT_USAGE) from None
        if not isinstance(parsed, dict):
            raise CliError(f"the datafile {args.datafile} is not a JSON object", EXIT_USAGE)
        return f"the datafile {args.datafile}", text
    if args.datafile_url is not None:
        if not args.datafile_url.lower().startswith(("http://", "https://")):
            raise CliError(f"--datafile-url must be an http:// or https:// URL, not {args.datafile_url!r}",
                           EXIT_USAGE)
        return args.datafile_url, None
    if args.sdk_key is not None:
        return f"Optimizely's CDN (SDK key {args.sdk_key})", None
    raise CliError("say where the datafile comes from: --datafile PATH, --sdk-key KEY or --datafile-url URL",
                   EXIT_USAGE)


# ---------------------------------------------------------------------------- delivering one event


class _Delivery:
    """What happened to one event: the client's result, then ODP's answers."""

    def __init__(self) -> None:
        self.result: SendResult = SendResult(False)
        self.answers: list[str] = []
        self.delivered = False
        self.problem = ""
        self.seconds = 0.0
        self._lock = threading.Lock()

    def listen(self, center: OdpNotificationCenter) -> None:
        center.add_notification_listener(ODP_BATCH_DELIVERED, self._on_delivered)
        center.add_notification_listener(ODP_BATCH_FAILED, self._on_failed)
        center.add_notification_listener(ODP_EVENTS_DROPPED, self._on_dropped)

    def _on_delivered(self, host: str, count: int, status: int) -> None:
        self._answer(f"HTTP {status} from {host} ({_plural(count, 'event')} delivered)")

    def _on_failed(self, host: str, count: int, status: int, retry_in: float) -> None:
        what = f"HTTP {status}" if status else "no answer (network error)"
        self._answer(f"{what} from {host}; retrying in {retry_in:.1f}s")

    def _on_dropped(self, reason: str, count: int) -> None:
        self._answer(f"{_plural(count, 'event')} dropped ({reason})")

    def _answer(self, line: str) -> None:
        with self._lock:
            self.answers.append(line)

    def report(self, indent: str = "") -> None:
        """Print the result and the answers on stdout."""
        result = self.result
        print(f"{indent}result: accepted" if result else f"{indent}result: discarded ({result.reason}) "
              f"{result.message}")
        with self._lock:
            for line in self.answers:
                print(f"{indent}server: {line}")
        if self.delivered:
            print(f"{indent}delivered in {self.seconds:.2f}s")


def _deliver_with_client(session: _Session, action: str, identifiers: dict[str, str], type: str,
                         data: dict[str, Any] | None) -> _Delivery:
    """Send one event with ``session.client``, flush, and tell what became of it. Blocks."""
    delivery = _Delivery()
    delivery.listen(session.center)
    mark = len(session.recent.messages)
    started = time.monotonic()
    delivery.result = session.client.send_odp_event(action, identifiers, type, data)
    if not delivery.result:
        delivery.problem = f"{delivery.result.reason}: {delivery.result.message}"
        return delivery
    finished = session.client.flush(session.timeout)
    delivery.seconds = time.monotonic() - started
    stats = session.client.odp_stats()
    delivery.delivered = stats.get("delivered", 0) >= 1
    if not delivery.delivered:
        said = session.recent.last(logging.ERROR, mark) or session.recent.last(logging.WARNING, mark)
        dropped = ", ".join(f"{reason}" for reason in stats.get("dropped") or {})
        if not finished:
            delivery.problem = f"no acknowledgement within {session.timeout:g}s"
        else:
            delivery.problem = "dropped" + (f" ({dropped})" if dropped else "")
        if said:
            delivery.problem += f": {said}"
    return delivery


def _deliver_direct(integration: OdpIntegration, body: bytes, timeout: float) -> tuple[Outcome, float]:
    transport = Transport(timeout, pool_size=1)
    started = time.monotonic()
    try:
        return transport.send(integration, body), time.monotonic() - started
    finally:
        transport.close()


# ---------------------------------------------------------------------------- send


def _cmd_send(args: argparse.Namespace) -> int:
    identifiers = dict(_pairs(args.ids, "--id"))
    if not identifiers:
        raise CliError("at least one --id KEY=VALUE is required (e.g. --id fs_user_id=user-123)", EXIT_USAGE)
    data = _event_data(args)
    try:
        event = build_event(args.action, identifiers, args.type, data)
    except InvalidEventError as invalid:
        print(f"result: discarded ({invalid.reason}) {invalid.message}")
        raise CliError(f"invalid event: {invalid.message}", EXIT_USAGE) from None
    if args.host is not None or args.api_key is not None:
        return _send_direct(args, event.to_json())

    session = _Session(args)
    try:
        session.require_datafile()
        delivery = _deliver_with_client(session, args.action, identifiers, args.type, data)
    finally:
        session.close()
    delivery.report()
    if not delivery.delivered:
        raise CliError(f"event not delivered: {delivery.problem}")
    return EXIT_OK


def _send_direct(args: argparse.Namespace, event_json: bytes) -> int:
    """``--host --api-key``: one request, no retry, no datafile."""
    if args.datafile is not None or args.sdk_key is not None or args.datafile_url is not None:
        raise CliError("--host and --api-key cannot be combined with a datafile source", EXIT_USAGE)
    if not args.host or not args.api_key:
        raise CliError("--host and --api-key go together", EXIT_USAGE)
    if not args.host.lower().startswith(("http://", "https://")):
        raise CliError(f"--host must be an http:// or https:// URL, not {args.host!r}", EXIT_USAGE)
    integration = OdpIntegration(args.host, args.api_key)
    if integration.is_plain_http_remote:
        _warn(f"{args.host} is plain http:// and not on this machine: the event and the API key travel "
              "unencrypted")
    print("result: accepted")
    outcome, seconds = _deliver_direct(integration, b"[" + event_json + b"]", args.timeout)
    answer = f"HTTP {outcome.status}" if outcome.status else "no answer"
    print(f"server: {outcome.detail or answer} from {integration.host}")
    if outcome.kind is not OutcomeKind.DELIVERED:
        raise CliError(f"event not delivered: {outcome.detail or answer} ({outcome.kind.value})")
    print(f"delivered in {seconds:.2f}s")
    return EXIT_OK


# ---------------------------------------------------------------------------- doctor


def _cmd_doctor(args: argparse.Namespace) -> int:
    has_source = args.datafile is not None or args.sdk_key is not None or args.datafile_url is not None
    warnings: list[str] = []
    disabled_by = ("argument --odp-disabled" if args.odp_disabled
                   else f"environment variable {ENV_PREFIX}DISABLED={os.environ.get(ENV_PREFIX + 'DISABLED')}"
                   if odp_disabled_by_environment() else "")
    native = ("its own ODP event manager is replaced by optimizely-odp-ext's" if compat.HAS_NATIVE_ODP
              else "it has no ODP of its own; optimizely-odp-ext provides it")
    lines = [("optimizely-sdk", f"{compat.SDK_VERSION} ({native})"), ("optimizely-odp-ext", __version__)]

    session: _Session | None = None
    config: Any = None
    integration: OdpIntegration | None = None
    state = IntegrationState.UNDETERMINED
    if has_source:
        session = _Session(args, odp_disabled=args.odp_disabled)
        settings = session.settings
    else:
        settings = _resolve_settings(_manager_arguments(args.settings))
        warnings.append("no datafile given (--datafile, --sdk-key or --datafile-url): the ODP integration "
                        "is unknown")
    try:
        if session is not None:
            config = session.wait_for_datafile()
            revision = f" (revision {getattr(config, 'revision', '?')})" if config is not None else ""
            lines.append(("datafile", session.label + revision))
            if config is None:
                warnings.append(session.no_datafile_message())
            else:
                integration = compat.integration_of(config)
                state = IntegrationState.INTEGRATED if integration else IntegrationState.NOT_INTEGRATED
        lines.append(("ODP state", {IntegrationState.INTEGRATED: "integrated",
                                    IntegrationState.NOT_INTEGRATED: "not integrated",
                                    IntegrationState.UNDETERMINED: "undetermined"}[state]))
        lines.append(("ODP host", integration.host if integration else "-"))
        lines.append(("ODP public key", f"{mask_key(integration.api_key)} (masked)" if integration else "-"))
        lines.append(("ODP enabled", f"no, disabled by {disabled_by}" if disabled_by else "yes"))
        warnings += _doctor_warnings(state, integration, disabled_by, settings)
        delivery = None
        if args.send_test_event and session is not None and config is not None:
            delivery = _deliver_with_client(session, DOCTOR_ACTION, dict(DOCTOR_IDENTIFIERS), DEFAULT_EVENT_TYPE,
                                            None)
    finally:
        if session is not None:
            session.close()

    width = max(len(name) for name, _ in lines) + 2
    for name, value in lines:
        print(f"{name + ':':<{width}}{value}")
    print("event manager settings (argument > environment > default):")
    for setting in SETTINGS:
        source = settings.sources[setting.name]
        where = {"argument": f"argument (--set {setting.name})",
                 "environment": f"environment ({setting.env_var})"}.get(source, source)
        value = getattr(settings, setting.name)
        print(f"  {setting.name:<23}{'-' if value is None else value!s:<12}{where}")
    spool_line = _doctor_spool(settings.spool_path, warnings)
    if spool_line:
        print(f"spool: {spool_line}")
    if warnings:
        print("warnings:")
        for warning in warnings:
            print(f"  - {warning}")
    healthy = state is IntegrationState.INTEGRATED and not disabled_by
    if args.send_test_event:
        print("test event:")
        if delivery is None:
            print("  not sent: no datafile")
        else:
            delivery.report(indent="  ")
            if not delivery.delivered:
                print(f"  not delivered: {delivery.problem}")
            healthy = healthy and delivery.delivered
    if healthy:
        print(f"status: OK, ODP events go to {integration.host if integration else '-'}")
        return EXIT_OK
    print("status: PROBLEM, ODP events would not be delivered" if has_source or args.send_test_event
          else "status: UNKNOWN, no datafile to check")
    return EXIT_FAILED


def _doctor_warnings(state: IntegrationState, integration: OdpIntegration | None, disabled_by: str,
                     settings: ManagerSettings) -> list[str]:
    warnings = []
    if disabled_by:
        warnings.append(f"ODP is disabled ({disabled_by}): send_odp_event returns odpNotEnabled")
    if state is IntegrationState.NOT_INTEGRATED:
        warnings.append('the datafile has no ODP integration (an "integrations" entry with key "odp", '
                        'a host and a publicKey): send_odp_event returns odpNotIntegrated')
    if integration is not None:
        if not integration.host.lower().startswith(("http://", "https://")):
            warnings.append(f"the ODP host {integration.host!r} is not an http:// or https:// URL: "
                            "requests to it fail")
        elif integration.is_plain_http_remote:
            warnings.append(f"the ODP host {integration.host} is plain http:// and not on this machine: "
                            "events and the API key travel unencrypted")
        if integration.api_key != integration.api_key.strip():
            warnings.append("the ODP public key has leading or trailing whitespace")
    if settings.retry_max_backoff < settings.retry_initial_backoff:
        warnings.append(f"retry_max_backoff ({settings.retry_max_backoff}) is below retry_initial_backoff "
                        f"({settings.retry_initial_backoff})")
    if settings.exit_timeout == 0 and settings.spool_path is None:
        warnings.append("exit_timeout is 0 and there is no spool: events pending when the interpreter exits "
                        "without close() are lost")
    return warnings


def _doctor_spool(path: str | None, warnings: list[str]) -> str:
    if path is None:
        return ""
    try:
        from optimizely_odp_ext.spool import SpoolError, SqliteSpool
    except ImportError as error:  # fcntl is POSIX only
        warnings.append(f"spool_path is set but the spool cannot be used here: {error}")
        return path
    if not os.path.exists(path):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            warnings.append(f"spool_path {path}: the directory {directory} does not exist")
        return f"{path} (not created yet)"
    try:
        stats = SqliteSpool.inspect(path)
    except SpoolError as error:
        warnings.append(str(error))
        return path
    return f"{path} ({_plural(stats['events'], 'event')} waiting)"


# ---------------------------------------------------------------------------- collector


def _cmd_collector(args: argparse.Namespace) -> int:
    from optimizely_odp_ext.testing.collector import OdpCollector

    jsonl: IO[str] | None = None
    if args.jsonl:
        try:
            jsonl = open(args.jsonl, "a", encoding="utf-8")  # noqa: SIM115 (closed in finally)
        except OSError as error:
            raise CliError(f"cannot open {args.jsonl}: {error.strerror}") from None
    collector = OdpCollector(api_key=args.api_key, port=args.port, record=False)
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]
    echo = [not args.quiet]

    def on_event(event: dict[str, Any]) -> None:
        """Runs on the server thread before the 202 goes out, so a client that has its 202
        knows the line is written."""
        line = json.dumps(event, separators=(",", ":"))
        with lock:
            try:
                if jsonl is not None:
                    jsonl.write(line + "\n")
                    jsonl.flush()
                if echo[0]:
                    print(line, flush=True)
            except OSError as error:  # stdout closed (| head) or the disk is full: stop
                echo[0] = False
                _error(f"cannot write the event: {error.strerror or error}")
                done.set()
            seen[0] += 1
            if args.max_events is not None and seen[0] >= args.max_events:
                done.set()

    collector.on_event = on_event
    try:
        with _sigterm_as_interrupt(), suppress(KeyboardInterrupt):
            try:
                collector.start()
            except OSError as error:
                raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {error.strerror or error}") from None
            keys = f"x-api-key {args.api_key!r}" if args.api_key else "any x-api-key"
            print(f"{PROG}: collector listening on {collector.url} (POST /v3/events, {keys}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
            done.wait(args.exit_after)
    finally:
        collector.stop()
        with lock:
            if jsonl is not None:
                jsonl.close()
    print(f"{PROG}: collector stopped after {_plural(seen[0], 'event')} in "
          f"{_plural(collector.request_count(), 'request')}", file=sys.stderr, flush=True)
    return EXIT_OK


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the process like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- spool


def _cmd_spool_stats(args: argparse.Namespace) -> int:
    from optimizely_odp_ext.spool import SpoolError, SqliteSpool

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


def _open_spool(path: str) -> SqliteSpool:
    from optimizely_odp_ext.spool import SpoolError, SqliteSpool

    if not os.path.isfile(path):
        raise CliError(f"spool {path} does not exist")
    try:
        return SqliteSpool(path)
    except SpoolError as error:
        raise CliError(str(error)) from None


def _cmd_spool_purge(args: argparse.Namespace) -> int:
    spool = _open_spool(args.path)
    try:
        count = spool.count()
        if count and not args.yes:
            if not sys.stdin.isatty():
                raise CliError(f"refusing to delete {_plural(count, 'event')} without --yes", EXIT_USAGE)
            try:
                answer = input(f"Delete {_plural(count, 'undelivered event')} from {args.path}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILED
        deleted = spool.purge()
    finally:
        spool.close()
    print(f"purged {_plural(deleted, 'event')} from {args.path}")
    return EXIT_OK


def _cmd_spool_replay(args: argparse.Namespace) -> int:
    spool = _open_spool(args.path)
    transport = Transport(args.timeout, pool_size=1)
    try:
        replay = _Replay(spool, transport, args.batch_size)
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
        why = "; ".join(f"{host} (key {mask_key(key)}): {reason}" for (host, key), reason in replay.blocked.items())
        raise CliError(f"{_plural(left, 'event')} not delivered" + (f": {why}" if why else ""))
    return EXIT_OK


class _Replay:
    """Sends a spool's events, batched per destination, one request at a time; deletes
    what ODP acknowledged. A destination that keeps failing (after a few retries) or
    refuses the key is given up for this run; its events stay in the spool. An event
    ODP refuses on its own (400/413/422, found by splitting the batch) is deleted, as
    the event manager drops it."""

    def __init__(self, spool: SqliteSpool, transport: Transport, batch_size: int) -> None:
        self.spool = spool
        self.transport = transport
        self.batch_size = batch_size
        self.total = spool.count()
        self.delivered = self.refused = self.skipped = 0
        self.blocked: dict[tuple[str, str], str] = {}
        self._step = max(REPLAY_PROGRESS_EVERY, math.ceil(self.total / 20))
        self._next_progress = self._step
        self._started = time.monotonic()

    def run(self) -> None:
        """Replay every event. Blocks until done (each request up to the transport's timeout)."""
        pending: dict[tuple[str, str], list[SpooledEvent]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for event in self.spool.iter_all(chunk=max(self.batch_size, 1000)):
            destination = (event.host, event.api_key)
            if destination in self.blocked:
                self._done(skipped=1)
                continue
            batch = pending.setdefault(destination, [])
            if batch and (len(batch) >= self.batch_size
                          or sizes[destination] + len(event.body) + 1 > MAX_BATCH_BYTES):
                self._send(destination, batch)
                batch = pending[destination] = []
            if not batch:
                sizes[destination] = 2
            batch.append(event)
            sizes[destination] += len(event.body) + 1
        for destination, batch in pending.items():
            if batch:
                self._send(destination, batch)

    def _send(self, destination: tuple[str, str], events: list[SpooledEvent]) -> None:
        if destination in self.blocked:
            self._done(skipped=len(events))
            return
        outcome = self._post(OdpIntegration(*destination), events)
        if outcome.kind is OutcomeKind.DELIVERED:
            self.spool.delete(event.rowid for event in events)
            self._done(delivered=len(events))
        elif outcome.kind is OutcomeKind.REJECTED and len(events) > 1:
            middle = len(events) // 2
            self._send(destination, events[:middle])
            self._send(destination, events[middle:])
        elif outcome.kind is OutcomeKind.REJECTED:
            _warn(f"ODP refused event {events[0].rowid} ({outcome.detail}); it is deleted")
            self.spool.delete([events[0].rowid])
            self._done(refused=1)
        else:
            self.blocked[destination] = outcome.detail or outcome.kind.value
            _warn(f"giving up {destination[0]} (key {mask_key(destination[1])}) for this replay: "
                  f"{outcome.detail or outcome.kind.value}; its events stay in the spool")
            self._done(skipped=len(events))

    def _post(self, integration: OdpIntegration, events: list[SpooledEvent]) -> Outcome:
        body = b"[" + b",".join(event.body for event in events) + b"]"
        failures = 0
        while True:
            outcome = self.transport.send(integration, body)
            if outcome.kind is not OutcomeKind.RETRY or failures >= REPLAY_RETRIES:
                return outcome
            failures += 1
            delay = min(REPLAY_MAX_BACKOFF, backoff_delay(failures, 0.5, REPLAY_MAX_BACKOFF, outcome.retry_after))
            _warn(f"{integration.host}: {outcome.detail}; retry {failures}/{REPLAY_RETRIES} in {delay:.1f}s")
            time.sleep(delay)  # a command-line pause between retries; Ctrl-C interrupts it

    def _done(self, delivered: int = 0, refused: int = 0, skipped: int = 0) -> None:
        self.delivered += delivered
        self.refused += refused
        self.skipped += skipped
        handled = self.delivered + self.refused + self.skipped
        if handled >= self._next_progress and self.total > self._step:
            while self._next_progress <= handled:
                self._next_progress += self._step
            rate = handled / max(time.monotonic() - self._started, 1e-6)
            print(f"{PROG}: replay: {handled:,}/{self.total:,} events ({100 * handled // self.total}%), "
                  f"{self.delivered:,} delivered, {rate:,.0f} events/s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- helpers


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _when(timestamp: float, now: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
    age = max(0.0, now - timestamp)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= seconds:
            return f"{moment} ({age / seconds:.1f}{unit} ago)"
    return f"{moment} ({age:.0f}s ago)"


if __name__ == "__main__":
    sys.exit(main())
