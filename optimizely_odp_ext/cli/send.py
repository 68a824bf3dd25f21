"""``optimizely-odp send``: send one ODP event and report its delivery."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from optimizely_odp_ext.cli.common import EXIT_OK, EXIT_USAGE, CliError, not_json, pairs, parse_value
from optimizely_odp_ext.cli.delivery import deliver
from optimizely_odp_ext.cli.session import (
    Session,
    add_client_arguments,
    add_source_arguments,
    direct_destination,
    wants_direct,
)
from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE, InvalidEventError, build_event
from optimizely_odp_ext.transport import OutcomeKind, Transport


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
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
    add_source_arguments(send, allow_host=True)
    add_client_arguments(send)
    send.set_defaults(handler=run)


def _event_data(args: argparse.Namespace) -> dict[str, Any] | None:
    data: dict[str, Any] = {}
    if args.data_json is not None:
        try:
            parsed = json.loads(args.data_json, parse_constant=not_json)
        except ValueError as error:
            raise CliError(f"--data-json is not valid JSON: {error}", EXIT_USAGE) from None
        if not isinstance(parsed, dict):
            raise CliError(f"--data-json must be a JSON object, not {type(parsed).__name__}", EXIT_USAGE)
        data.update(parsed)
    data.update((key, parse_value(value)) for key, value in pairs(args.data, "--data"))
    return data or None


def run(args: argparse.Namespace) -> int:
    """Send the event; raises :class:`CliError` unless it is delivered. Blocks."""
    identifiers = dict(pairs(args.ids, "--id"))
    if not identifiers:
        raise CliError("at least one --id KEY=VALUE is required (e.g. --id fs_user_id=user-123)", EXIT_USAGE)
    data = _event_data(args)
    try:
        event = build_event(args.action, identifiers, args.type, data)
    except InvalidEventError as invalid:
        print(f"result: discarded ({invalid.reason}) {invalid.message}")
        raise CliError(f"invalid event: {invalid.message}", EXIT_USAGE) from None
    if wants_direct(args):
        return _send_direct(args, event.to_json())

    session = Session(args)
    try:
        session.require_datafile()
        delivery = deliver(session, args.action, identifiers, args.type, data)
    finally:
        session.close()
    delivery.report()
    if not delivery.delivered:
        raise CliError(f"event not delivered: {delivery.problem}")
    return EXIT_OK


def _send_direct(args: argparse.Namespace, event_json: bytes) -> int:
    """``--host --api-key``: one request, no retry, no datafile."""
    integration = direct_destination(args)
    print("result: accepted")
    transport = Transport(args.timeout, pool_size=1)
    started = time.monotonic()
    try:
        outcome = transport.send(integration, b"[" + event_json + b"]")
        seconds = time.monotonic() - started
    finally:
        transport.close()
    answer = f"HTTP {outcome.status}" if outcome.status else "no answer"
    print(f"server: {outcome.detail or answer} from {integration.host}")
    if outcome.kind is not OutcomeKind.DELIVERED:
        raise CliError(f"event not delivered: {outcome.detail or answer} ({outcome.kind.value})")
    print(f"delivered in {seconds:.2f}s")
    return EXIT_OK
