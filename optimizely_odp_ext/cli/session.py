"""The client ``send`` and ``doctor`` build from the command line: where the datafile
comes from, the event manager settings, and the SDK's log."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from optimizely.config_manager import PollingConfigManager
from optimizely.helpers import enums

from optimizely_odp_ext import compat
from optimizely_odp_ext.cli.common import (
    DEFAULT_TIMEOUT,
    EXIT_FAILED,
    EXIT_USAGE,
    PROG,
    CliError,
    pairs,
    positive_float,
)
from optimizely_odp_ext.client import OdpOptimizely
from optimizely_odp_ext.managers.batch import BatchEventManager
from optimizely_odp_ext.notifications import OdpNotificationCenter
from optimizely_odp_ext.settings import SETTINGS, SETTINGS_BY_NAME, ManagerSettings, SettingError

# ---------------------------------------------------------------------------- arguments


def add_source_arguments(parser: argparse.ArgumentParser, allow_host: bool) -> None:
    group = parser.add_argument_group("where the ODP integration comes from")
    group.add_argument("--datafile", metavar="PATH", help="a datafile (JSON) on disk")
    group.add_argument("--sdk-key", metavar="KEY", help="fetch the datafile for this SDK key, as the SDK does")
    group.add_argument("--datafile-url", metavar="URL", help="fetch the datafile from this URL instead of "
                       "Optimizely's CDN")
    if allow_host:
        group.add_argument("--host", metavar="URL", help="send straight to this ODP host (no datafile)")
        group.add_argument("--api-key", metavar="KEY", help="the ODP public API key for --host")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="an event manager setting, as an argument to the client (repeatable): "
                        + ", ".join(setting.name for setting in SETTINGS))
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="seconds to wait for the datafile, and then for delivery (default %(default)s)")


def has_source(args: argparse.Namespace) -> bool:
    """Whether the command line says where a datafile comes from."""
    return args.datafile is not None or args.sdk_key is not None or args.datafile_url is not None


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
        return args.datafile, text
    if args.datafile_url is not None:
        if not args.datafile_url.lower().startswith(("http://", "https://")):
            raise CliError(f"--datafile-url must be an http:// or https:// URL, not {args.datafile_url!r}",
                           EXIT_USAGE)
        return args.datafile_url, None
    if args.sdk_key is not None:
        return f"Optimizely's CDN (SDK key {args.sdk_key})", None
    raise CliError("say where the datafile comes from: --datafile PATH, --sdk-key KEY or --datafile-url URL",
                   EXIT_USAGE)


def manager_arguments(texts: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` as the keyword arguments of ``BatchEventManager``, validated."""
    arguments: dict[str, Any] = {}
    for name, text in pairs(texts, "--set"):
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise CliError(f"--set: unknown setting {name!r} (one of {', '.join(SETTINGS_BY_NAME)})", EXIT_USAGE)
        try:
            arguments[name] = setting.parse(text)
        except ValueError as error:
            raise CliError(f"--set {name}={text!r} is not valid: {error}", EXIT_USAGE) from None
    return arguments


def resolve_settings(arguments: dict[str, Any]) -> ManagerSettings:
    try:
        return ManagerSettings.resolve(arguments)
    except SettingError as error:
        raise CliError(str(error), EXIT_USAGE) from None


# ---------------------------------------------------------------------------- the SDK's log


class RecentMessages(logging.Handler):
    """Keeps the SDK's last warnings and errors, to explain a failure in one line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: deque[tuple[int, str]] = deque(maxlen=50)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append((record.levelno, record.getMessage()))
        except Exception:
            self.handleError(record)

    def last(self, level: int = logging.ERROR, since: int = 0, latest: bool = True) -> str:
        """The latest (or earliest) message at ``level`` or above after the first ``since``
        kept, or ""."""
        messages = list(self.messages)[since:]
        for levelno, message in reversed(messages) if latest else messages:
            if levelno >= level:
                return message
        return ""


def _sdk_logger(verbose: bool) -> tuple[logging.Logger, RecentMessages]:
    """A logger for the SDK that is not in logging's registry (nothing global is configured)."""
    logger = logging.Logger(PROG, logging.DEBUG if verbose else logging.WARNING)
    recent = RecentMessages()
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


class Session:
    """An ``OdpOptimizely`` built from the command line's source, and what it said."""

    def __init__(self, args: argparse.Namespace, *, odp_disabled: bool = False) -> None:
        self.timeout: float = args.timeout
        self.label, datafile = _source(args)
        self.logger, self.recent = _sdk_logger(bool(getattr(args, "verbose", False)))
        arguments = manager_arguments(args.settings)
        self.settings = resolve_settings(arguments)
        self.center = OdpNotificationCenter(self.logger)
        options: dict[str, Any] = {
            "event_dispatcher": _LocalDispatcher(), "logger": self.logger, "notification_center": self.center,
            "odp_event_manager": BatchEventManager(**arguments), "odp_disabled": odp_disabled,
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
            fetched = isinstance(self.client.config_manager, PollingConfigManager)
            raise CliError(self.no_datafile_message(), EXIT_FAILED if fetched else EXIT_USAGE)
        return config

    def no_datafile_message(self) -> str:
        polling = isinstance(self.client.config_manager, PollingConfigManager)
        reason = self.recent.last(latest=polling)  # a fetch's latest failure; a file's first complaint
        if polling:
            return f"no datafile from {self.label} within {self.timeout:g}s" + (f": {reason}" if reason else "")
        return f"{self.label} is not a valid datafile" + (f": {reason}" if reason else "")

    def close(self) -> None:
        """Stop the client; what is still undelivered was reported already. Blocks briefly."""
        self.client.close(timeout=0)
