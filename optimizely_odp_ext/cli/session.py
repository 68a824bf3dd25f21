"""The client ``send`` and ``doctor`` build from the command line: where the datafile
comes from, the event manager settings, and the SDK's log."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from optimizely.config_manager import PollingConfigManager
from optimizely.helpers import enums

from optimizely_odp_ext import compat
from optimizely_odp_ext.cli.common import (
    DEFAULT_TIMEOUT,
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    pairs,
    positive_float,
    seconds,
    warn,
)
from optimizely_odp_ext.cli.sdk_log import fetch_failure, sdk_logger
from optimizely_odp_ext.client import OdpOptimizely
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers.batch import BatchEventManager
from optimizely_odp_ext.notifications import OdpNotificationCenter
from optimizely_odp_ext.settings import SETTINGS, SETTINGS_BY_NAME, ManagerSettings, Setting, SettingError, parse_bool

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


def wants_direct(args: argparse.Namespace) -> bool:
    """Whether the command line names the ODP host itself (``--host``/``--api-key``)."""
    return getattr(args, "host", None) is not None or getattr(args, "api_key", None) is not None


def direct_destination(args: argparse.Namespace) -> OdpIntegration:
    """``--host URL --api-key KEY`` as a destination, checked; warns about plain http:// to
    another machine."""
    if has_source(args):
        raise CliError("--host and --api-key cannot be combined with a datafile source", EXIT_USAGE)
    if not args.host or not args.api_key:
        raise CliError("--host and --api-key go together", EXIT_USAGE)
    if not args.host.lower().startswith(("http://", "https://")):
        raise CliError(f"--host must be an http:// or https:// URL, not {args.host!r}", EXIT_USAGE)
    integration = OdpIntegration(args.host, args.api_key)
    if integration.is_plain_http_remote:
        warn(f"{args.host} is plain http:// and not on this machine: events and the API key travel "
             "unencrypted")
    return integration


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
        arguments[name] = _parse_setting(setting, text, f"--set {name}={text}")
    return arguments


def _parse_setting(setting: Setting, text: str, where: str) -> Any:
    try:
        return setting.parse(text)
    except ValueError as error:
        raise CliError(f"{where}: {setting.name} {_expected(setting, error)}", EXIT_USAGE) from None


def _expected(setting: Setting, error: ValueError) -> str:
    """What a setting takes, in words (not Python's ``invalid literal for int()``)."""
    if setting.parse is parse_bool:
        return str(error)
    kind = "a whole number" if setting.parse is int else "a number" if setting.parse is float else "a value"
    low, high = setting.minimum, setting.maximum
    bounds = (f" from {low:g} to {high:g}" if low is not None and high is not None
              else f" of at least {low:g}" if low is not None else "")
    return f"must be {kind}{bounds}"


def resolve_settings(arguments: dict[str, Any], environ: Mapping[str, str] | None = None) -> ManagerSettings:
    """The settings in force (argument > environment > default); a one-line usage error naming
    the setting, and the variable when the value came from one."""
    env = os.environ if environ is None else environ
    for setting in SETTINGS:
        if arguments.get(setting.name) is None and setting.env_var in env:
            text = env[setting.env_var]
            _parse_setting(setting, text, f"environment variable {setting.env_var}={text}")
    try:
        return ManagerSettings.resolve(arguments, env)
    except SettingError as error:
        raise CliError(str(error), EXIT_USAGE) from None


def _foreign_database(path: str | None) -> str:
    """Why the SQLite file at ``path`` must not be opened as a spool: it is a database of
    something else, which opening it would change ("" when it is a spool, is missing, or
    is damaged: the event manager deals with those)."""
    if not path or not os.path.isfile(path):
        return ""
    try:
        from optimizely_odp_ext.spool import SpoolError, SqliteSpool
    except ImportError:  # no fcntl (not POSIX): the manager reports it
        return ""
    try:
        SqliteSpool.inspect(path)
    except SpoolError as error:
        return str(error) if "not an ODP event spool" in str(error) else ""
    return ""


# ---------------------------------------------------------------------------- the client


class _LocalDispatcher:
    """The base SDK's ``event_dispatcher``: impression and conversion events stay here."""

    def dispatch_event(self, event: Any) -> None:
        """Drop the event. Non-blocking."""


class Session:
    """An ``OdpOptimizely`` built from the command line's source, and what it said.

    Args:
        args: the parsed command line (source options, ``settings``, ``timeout``, ``verbose``).
        odp_disabled: build the client with ``odp_disabled=True``.
        keep_going: when the event manager cannot be built (a setting it refuses, such as a
            spool it cannot use), record why in :attr:`manager_problem` and build it without
            its spool, instead of raising :class:`CliError` (``doctor`` reports it).
        with_manager: False for a client that only reads the datafile (ODP disabled, no
            event manager, no settings read): ``import`` sends through its own loop.
        deliver: False for a client that joins a fleet (``spool_url``) without claiming
            anything from it (``doctor`` without a test event).

    Building it blocks briefly (a datafile file is parsed; a fetch starts in the SDK's
    polling thread). Not thread-safe: one command uses it from its main thread.
    """

    def __init__(self, args: argparse.Namespace, *, odp_disabled: bool = False, keep_going: bool = False,
                 with_manager: bool = True, deliver: bool = True) -> None:
        self.timeout: float = args.timeout
        self.label, datafile = _source(args)
        self.logger, self.recent = sdk_logger(bool(getattr(args, "verbose", False)))
        arguments = manager_arguments(getattr(args, "settings", [])) if with_manager else {}
        self.settings = resolve_settings(arguments) if with_manager else None
        if not deliver and self.settings is not None and self.settings.spool_url:
            arguments["deliver"] = False  # a member that only looks: it claims nothing from the fleet
        self.manager_problem = ""
        self.center = OdpNotificationCenter(self.logger)
        self.center.add_notification_listener(enums.NotificationTypes.OPTIMIZELY_CONFIG_UPDATE, self.recent.poke)
        self.fetch_problem = ""
        options: dict[str, Any] = {
            "event_dispatcher": _LocalDispatcher(), "logger": self.logger, "notification_center": self.center,
            "odp_event_manager": self._manager(arguments, keep_going) if with_manager else None,
            "odp_disabled": odp_disabled or not with_manager,
        }
        if datafile is not None:
            self.client = OdpOptimizely(datafile=datafile, **options)
        else:
            config_manager = PollingConfigManager(sdk_key=args.sdk_key, url=args.datafile_url, logger=self.logger,
                                                  notification_center=self.center)
            self.label = getattr(config_manager, "datafile_url", None) or self.label
            self.client = OdpOptimizely(sdk_key=args.sdk_key, config_manager=config_manager, **options)

    def _manager(self, arguments: dict[str, Any], keep_going: bool) -> BatchEventManager:
        assert self.settings is not None
        problem = _foreign_database(self.settings.spool_path)
        if not problem:
            try:
                return BatchEventManager(**arguments)
            except SettingError as error:
                problem = str(error)
        if not keep_going:
            raise CliError(problem)
        self.manager_problem = problem
        return BatchEventManager(**{**arguments, "spool_path": "", "spool_url": "", "deliver": True})

    @property
    def polling(self) -> bool:
        return isinstance(self.client.config_manager, PollingConfigManager)

    def wait_for_datafile(self) -> Any:
        """The client's ProjectConfig once there is one; None after ``timeout``, or as soon as
        the SDK reports that its fetch failed (:attr:`fetch_problem` says why). Blocks."""
        manager = self.client.config_manager
        config = compat.current_project_config(manager)
        if config is not None or not self.polling:
            return config
        thread = getattr(getattr(manager, "_polling_thread", None), "ident", None)  # None: any thread's error
        deadline = time.monotonic() + self.timeout
        with self.recent.changed:
            while True:
                config = compat.current_project_config(manager)
                if config is not None:
                    return config
                failure = self.recent.first_error_from(thread)
                if failure:
                    self.fetch_problem = fetch_failure(failure)
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.recent.changed.wait(remaining)

    def require_datafile(self) -> Any:
        config = self.wait_for_datafile()
        if config is None:
            raise CliError(self.no_datafile_message(), EXIT_FAILED if self.polling else EXIT_USAGE)
        return config

    def no_datafile_message(self) -> str:
        if self.fetch_problem:
            return f"cannot get the datafile from {self.label}: {self.fetch_problem}"
        if self.polling:
            return f"no datafile from {self.label} within {seconds(self.timeout)}"
        reason = self.recent.last(latest=False)  # a file's first complaint
        return f"{self.label} is not a valid datafile" + (f": {reason}" if reason else "")

    def close(self) -> None:
        """Stop the client; what is still undelivered was reported already. Blocks briefly."""
        self.client.close(timeout=0)
