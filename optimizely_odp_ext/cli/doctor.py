"""``optimizely-odp doctor``: report the ODP setup a datafile gives, and what looks wrong."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from typing import Any

from optimizely_odp_ext import __version__, compat, encoding
from optimizely_odp_ext.cli import spool_redis
from optimizely_odp_ext.cli.common import EXIT_FAILED, EXIT_OK, plural
from optimizely_odp_ext.cli.delivery import Delivery, deliver
from optimizely_odp_ext.cli.session import (
    Session,
    add_client_arguments,
    add_source_arguments,
    has_source,
    manager_arguments,
    resolve_settings,
)
from optimizely_odp_ext.encoding import ENCODER_VARIABLE
from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE
from optimizely_odp_ext.integration import IntegrationState, OdpIntegration, mask_key
from optimizely_odp_ext.settings import ENV_PREFIX, SETTINGS, ManagerSettings, odp_disabled_by_environment
from optimizely_odp_ext.spool.urls import mask_url

DOCTOR_ACTION = "doctor_test"
DOCTOR_IDENTIFIERS = {"fs_user_id": "optimizely-odp-doctor"}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
    doctor = commands.add_parser("doctor", parents=[verbose], help="report the ODP setup a datafile gives",
                                 description="Load the datafile as OdpOptimizely would and report the ODP "
                                 "integration, the event manager settings in force and what looks wrong. "
                                 "Exits 1 unless ODP events would be delivered.")
    add_source_arguments(doctor, allow_host=False)
    add_client_arguments(doctor)
    doctor.add_argument("--odp-disabled", action="store_true",
                        help="check as if the application passed OdpOptimizely(odp_disabled=True)")
    doctor.add_argument("--send-test-event", action="store_true",
                        help=f"send one event (action {DOCTOR_ACTION}, identifier fs_user_id="
                        f"{DOCTOR_IDENTIFIERS['fs_user_id']}) and report its delivery")
    doctor.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the report; EXIT_OK only if ODP events would be delivered. Blocks."""
    source_given = has_source(args)
    warnings: list[str] = []
    disabled_by = ("argument --odp-disabled" if args.odp_disabled
                   else f"environment variable {ENV_PREFIX}DISABLED={os.environ.get(ENV_PREFIX + 'DISABLED')}"
                   if odp_disabled_by_environment() else "")
    native = ("its own ODP event manager is replaced by optimizely-odp-ext's" if compat.HAS_NATIVE_ODP
              else "it has no ODP of its own; optimizely-odp-ext provides it")
    lines = [("optimizely-sdk", f"{compat.SDK_VERSION} ({native})"), ("optimizely-odp-ext", __version__),
             ("JSON encoder", _encoder())]
    encoder_problem = encoding.variable_problem()
    if encoder_problem:
        warnings.append(encoder_problem)

    session: Session | None = None
    config: Any = None
    integration: OdpIntegration | None = None
    state = IntegrationState.UNDETERMINED
    if source_given:
        session = Session(args, odp_disabled=args.odp_disabled, keep_going=True, deliver=args.send_test_event)
        assert session.settings is not None  # a session with an event manager
        settings = session.settings
    else:
        settings = resolve_settings(manager_arguments(args.settings))
        warnings.append("no datafile given (--datafile, --sdk-key or --datafile-url): the ODP integration "
                        "is unknown")
    try:
        redis_line, redis_failed = spool_redis.doctor_check(settings, session, warnings)
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
        warnings += _warnings(state, integration, disabled_by, settings)
        spool_line, spool_problem = _spool(settings.spool_path, session)
        delivery: Delivery | None = None
        if args.send_test_event and session is not None and config is not None:
            delivery = deliver(session, DOCTOR_ACTION, dict(DOCTOR_IDENTIFIERS), DEFAULT_EVENT_TYPE, None)
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
        value = mask_url(value) if setting.secret and isinstance(value, str) else value  # spool_url's password
        shown = "-" if value is None else str(round(value, 3)) if isinstance(value, float) else str(value)
        print(f"  {setting.name:<23}{shown:<12} {where}")
    if spool_line:
        print(f"spool: {spool_line}")
    if redis_line:
        print(f"spool: {redis_line}")
    if warnings:
        print("warnings:")
        for warning in warnings:
            print(f"  - {warning}")
    healthy = state is IntegrationState.INTEGRATED and not disabled_by and not spool_problem and not redis_failed
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
    if spool_problem:
        print(f"status: PROBLEM, {spool_problem}")
    else:
        print("status: PROBLEM, ODP events would not be delivered" if source_given or args.send_test_event
              else "status: UNKNOWN, no datafile to check")
    return EXIT_FAILED


def _warnings(state: IntegrationState, integration: OdpIntegration | None, disabled_by: str,
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


def _spool(path: str | None, session: Session | None) -> tuple[str, str]:
    """The spool's line of the report ("" without a spool), and what is wrong with it ("" if
    nothing is): the event manager refused it (a ``SettingError``), its ``stats()["spool"]``
    has a ``state`` other than ``ok`` (e.g. a damaged file renamed aside), or the manager
    logged that it could not open it."""
    if not path:
        return "", ""
    if session is None:  # no client to build: look at the file only
        return _inspect(path)
    if session.manager_problem:
        return f"{path} (cannot be used)", f"the spool cannot be used: {session.manager_problem}"
    spool = session.client.odp_stats().get("spool")
    if isinstance(spool, dict):
        state = str(spool.get("state", "ok"))
        where = spool.get("description") or path
        if state != "ok":
            details = ", ".join(f"{key} {_shown(key, value)}" for key, value in sorted(spool.items())
                                if key not in ("kind", "state", "description") and value not in (None, "", 0))
            return f"{where} ({state})", f"the spool {where} is {state}" + (f" ({details})" if details else "")
        return f"{where} ({_waiting(spool)})" if "events" in spool else str(where), ""
    said = next((text for text in session.recent.errors() if "spool" in text.lower()), "")
    if "in use by another process" in said:  # an application has it open: look, do not touch
        line, problem = _inspect(path)
        return line.replace(f"{path} (", f"{path} (in use by another process; ", 1), problem
    if said:
        return f"{path} (cannot be used)", f"the spool cannot be used: {said}"
    return _inspect(path)


def _shown(key: str, value: Any) -> str:
    """A spool stats value for the report: a wall-clock time as UTC, the rest as it is."""
    if isinstance(value, float) and (key == "since" or key.endswith("_at")) and value > 1e9:
        return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
    return str(value)


def _waiting(spool: dict[str, Any]) -> str:
    return f"{plural(int(spool.get('events') or 0), 'event')} waiting"


def _inspect(path: str) -> tuple[str, str]:
    """The report line from the file alone (without opening it as the manager would)."""
    try:
        from optimizely_odp_ext.spool import SpoolError, SqliteSpool
    except ImportError as error:  # fcntl is POSIX only
        return path, f"the spool cannot be used here: {error}"
    if not os.path.exists(path):
        return f"{path} (not created yet)", ""
    try:
        stats = SqliteSpool.inspect(path)
    except SpoolError as error:
        return path, f"the spool cannot be used: {error}"
    return f"{path} ({_waiting(stats)})", ""


def _encoder() -> str:
    """Which encoder events get, and how to get the faster one (the wire bytes are the same)."""
    name = encoding.encoder_name()
    if name == "ujson":
        return f"ujson (the [fast] extra; {ENCODER_VARIABLE}=json turns it off)"
    if os.environ.get(ENCODER_VARIABLE, "").strip().lower() in encoding.STDLIB_VALUES:
        return f"json (the standard library; {ENCODER_VARIABLE}={os.environ[ENCODER_VARIABLE].strip()})"
    return "json (the standard library; pip install 'optimizely-odp-ext[fast]' for ujson)"
