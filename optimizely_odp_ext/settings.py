"""Every setting of the event managers: one source of truth for name, variable, default.

Precedence: constructor argument > ``OPTIMIZELY_ODP_*`` environment variable > default.
Each value is validated with an error naming the setting.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any, Callable, NamedTuple

ENV_PREFIX = "OPTIMIZELY_ODP_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


class SettingError(ValueError):
    """A setting has a value it cannot take."""


class Setting(NamedTuple):
    """One setting: its name, parser, default, bounds and meaning. (Named tuples here, not
    dataclasses: they are made at import, and cost a tenth of the time to create.)"""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    secret: bool = False
    """Its value may hold a password: messages show it masked."""

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def kind(self) -> str:
        """The expected type's name (``int``, ``float``, ``bool``, ``str``)."""
        return type(self.default).__name__ if self.default is not None else "str"

    def expectation(self) -> str:
        """What a value must be, in words: ``a whole number from 1 to 500``."""
        words = {"int": "a whole number", "float": "a number", "bool": "true or false (1/0, yes/no, on/off)",
                 "str": "text"}[self.kind]
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"{words} from {_number(low)} to {_number(high)}"
        if low is not None:
            return f"{words} of at least {_number(low)}"
        return words

    def shown(self, value: object) -> str:
        """``repr(value)`` as a message may show it."""
        if self.secret and isinstance(value, str):
            from optimizely_odp_ext.spool.urls import mask_url

            return repr(mask_url(value))
        return repr(value)


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")


def _path(text: str) -> str | None:
    return text or None


MiB = 1024 * 1024
SPOOL_URL_SCHEMES = ("redis", "rediss", "unix")

SETTINGS: tuple[Setting, ...] = (
    Setting("batch_size", int, 500, "Most events in one request (ODP accepts up to 500).", 1, 500),
    Setting("max_batch_bytes", int, 4 * MiB, "Most bytes of JSON in one request.", 1024),
    Setting("flush_interval", float, 1.0, "Seconds an event may wait for its batch to fill.", 0, 3600),
    Setting("max_in_flight", int, 4, "Requests sent at the same time.", 1, 64),
    Setting("max_queue_events", int, 250_000, "Events held in memory, waiting or retried; beyond it new "
            "events are refused with queueFull.", 1),
    Setting("max_queue_bytes", int, 128 * MiB, "Bytes of memory the held events take (counted, see README); beyond "
            "it new events are refused with queueFull.", 1024),
    Setting("request_timeout", float, 10.0, "Seconds to wait for ODP to answer one request.", 0.01, 600),
    Setting("retry_initial_backoff", float, 0.5, "Seconds before the first retry (doubling, with jitter).",
            0, 3600),
    Setting("retry_max_backoff", float, 30.0, "Longest wait between two retries.", 0, 86400),
    Setting("max_event_age", float, 24 * 3600.0, "Seconds after which an undelivered event is given up "
            "(reason expired).", 1),
    Setting("close_timeout", float, 10.0, "Seconds close() waits to deliver what was accepted.", 0, 3600),
    Setting("exit_timeout", float, 5.0, "Seconds the interpreter waits at exit to deliver pending events "
            "when close() was not called (one wait for all clients: each manager's counts from the exit's start).",
            0, 3600),
    Setting("spool_path", _path, None, "SQLite file where accepted events wait until ODP acknowledged "
            "them (durable across crashes and restarts). Off by default.", optional=True),
    Setting("spool_url", _path, None, "redis://, rediss:// or unix:// URL of a Redis stream a fleet shares: "
            "every process appends the events it accepts, any live one delivers them (needs "
            "optimizely-odp-ext[redis]). Off by default; not together with spool_path.", optional=True, secret=True),
    Setting("spool_stream", str, "optimizely-odp:events", "Key of the Redis stream (with spool_url)."),
    Setting("spool_group", str, "optimizely-odp", "Consumer group of the processes that deliver from the stream "
            "(with spool_url)."),
    Setting("claim_after", float, 60.0, "Seconds before events a silent process claimed are taken over by "
            "another process of the fleet (with spool_url).", 0.1, 86400),
    Setting("deliver", parse_bool, True, "Deliver events; False only appends them to the shared spool, for a "
            "relay (optimizely-odp relay) to deliver (with spool_url)."),
)

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


class ManagerSettings(NamedTuple):
    """The settings in force for one manager, and where each value came from."""

    batch_size: int
    max_batch_bytes: int
    flush_interval: float
    max_in_flight: int
    max_queue_events: int
    max_queue_bytes: int
    request_timeout: float
    retry_initial_backoff: float
    retry_max_backoff: float
    max_event_age: float
    close_timeout: float
    exit_timeout: float
    spool_path: str | None
    spool_url: str | None
    spool_stream: str
    spool_group: str
    claim_after: float
    deliver: bool
    sources: Mapping[str, str]
    """For each setting: ``argument``, ``environment`` or ``default`` (``ignored``: set in the
    environment for a setting this manager has no use for, see :meth:`resolve`)."""

    @classmethod
    def resolve(cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                ignored: Collection[str] = ()) -> ManagerSettings:
        """Resolve every setting: argument (not None) over environment variable over default.

        ``ignored``: settings the manager has no use for; they keep their default whatever the
        environment says (a variable set for them is marked ``ignored`` in ``sources``).

        Raises :class:`SettingError` naming the setting (and variable) on a bad value or
        an unknown argument name.
        """
        env = os.environ if environ is None else environ
        unknown = set(arguments) - set(SETTINGS_BY_NAME)
        if unknown:
            raise SettingError(f"unknown ODP event manager setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS:
            raw = arguments.get(setting.name)
            if setting.name in ignored:
                values[setting.name] = setting.default
                sources[setting.name] = "ignored" if setting.env_var in env else "default"
            elif raw is not None:
                values[setting.name] = _check(setting, raw, f"argument {setting.name}")
                sources[setting.name] = "argument"
            elif setting.env_var in env:
                where = f"environment variable {setting.env_var}"
                try:
                    parsed = setting.parse(env[setting.env_var])
                except ValueError:
                    raise SettingError(f"{where}={setting.shown(env[setting.env_var])} is not valid: "
                                       f"{setting.name} must be {setting.expectation()}") from None
                values[setting.name] = _check(setting, parsed, where)
                sources[setting.name] = "environment"
            else:
                values[setting.name] = setting.default
                sources[setting.name] = "default"
        url = values["spool_url"]
        if url and url.split("://", 1)[0].lower() not in SPOOL_URL_SCHEMES:
            from optimizely_odp_ext.spool.urls import mask_url

            raise SettingError(f"spool_url must be a redis://, rediss:// or unix:// URL, not {mask_url(url)!r}")
        if values["spool_path"] and values["spool_url"]:
            raise SettingError("spool_path and spool_url cannot both be set: choose one spool")
        if not values["deliver"] and not values["spool_url"]:
            raise SettingError("deliver=False needs a shared spool (spool_url): events would never be delivered")
        return cls(**values, sources=sources)

    def as_dict(self) -> dict[str, Any]:
        return {name: value for name, value in self._asdict().items() if name != "sources"}


def seconds(value: float) -> str:
    """A duration as people write it: ``0.2``, ``10``, ``1.25`` (at most 3 decimals)."""
    return f"{round(value, 3):g}"


def _number(value: float) -> str:
    return f"{value:g}"


def _check(setting: Setting, value: Any, where: str) -> Any:
    if value is None and setting.optional:
        return None
    expected = type(setting.default) if setting.default is not None else str
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise SettingError(f"{where} must be {setting.expectation()}, not {type(value).__name__}: "
                           f"{setting.shown(value)}")
    if isinstance(value, (str, bool)):
        if isinstance(value, str) and not value and not setting.optional:
            raise SettingError(f"{where} must not be empty")
        return value
    if value != value:  # NaN: every comparison with a bound is False, and it would pass them
        raise SettingError(f"{where} must be {setting.expectation()}, not {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        raise SettingError(f"{where} must be {setting.expectation()}, not {value!r}")
    if setting.maximum is not None and value > setting.maximum:
        raise SettingError(f"{where} must be {setting.expectation()}, not {value!r}")
    return value


def odp_disabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``OPTIMIZELY_ODP_DISABLED`` is 1/true/yes/on (any case)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_PREFIX + "DISABLED", "").strip().lower() in TRUE_WORDS
