"""``optimizely-odp collector``: run the loopback ODP collector in the foreground."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from contextlib import suppress
from typing import IO, Any

from optimizely_odp_ext.cli.common import (
    EXIT_OK,
    PROG,
    CliError,
    error,
    masked,
    plural,
    positive_float,
    positive_int,
    sigterm_as_interrupt,
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
    collector = commands.add_parser("collector", parents=[verbose], help="run a local ODP collector",
                                    description="Serve an ODP-compatible POST /v3/events on 127.0.0.1 in the "
                                    "foreground; print each accepted event as one JSON line on stdout (the "
                                    "URL and a summary go to stderr). Stops on Ctrl-C or SIGTERM.")
    collector.add_argument("--port", type=_port, default=0, metavar="N", help="the port (default: a free one)")
    collector.add_argument("--api-key", metavar="KEY", help="the only x-api-key accepted (default: any key)")
    collector.add_argument("--jsonl", metavar="FILE", help="also append each event to FILE as a JSON line")
    collector.add_argument("--quiet", action="store_true", help="do not print the events on stdout")
    collector.add_argument("--max-events", type=positive_int, metavar="N", help="stop after N events")
    collector.add_argument("--exit-after", type=positive_float, metavar="SECONDS",
                           help="stop after SECONDS")
    collector.set_defaults(handler=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, SIGTERM, ``--max-events`` or ``--exit-after``. Blocks."""
    from optimizely_odp_ext.testing.collector import OdpCollector

    jsonl: IO[str] | None = None
    if args.jsonl:
        try:
            jsonl = open(args.jsonl, "a", encoding="utf-8")  # noqa: SIM115 (closed in finally)
        except OSError as failure:
            raise CliError(f"cannot open {args.jsonl}: {failure.strerror}") from None
    collector = OdpCollector(api_key=args.api_key, port=args.port, record=False)
    done = threading.Event()
    last_request: list[threading.Thread | None] = [None]
    """The server thread of the request that reached --max-events: its 202 is still to go out."""
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
            except OSError as failure:  # stdout closed (| head) or the disk is full: stop
                echo[0] = False
                error(f"cannot write the event: {failure.strerror or failure}")
                done.set()
            seen[0] += 1
            if args.max_events is not None and seen[0] >= args.max_events and not done.is_set():
                last_request[0] = threading.current_thread()
                done.set()

    collector.on_event = on_event
    try:
        with sigterm_as_interrupt(), suppress(KeyboardInterrupt):
            try:
                collector.start()
            except OSError as failure:
                raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {failure.strerror or failure}") from None
            keys = f"x-api-key {masked(args.api_key)}" if args.api_key else "any x-api-key"
            print(f"{PROG}: collector listening on {collector.url} (POST /v3/events, {keys}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
            done.wait(args.exit_after)
            _let_it_answer(last_request[0])
    finally:
        collector.stop()
        with lock:
            if jsonl is not None:
                jsonl.close()
    print(f"{PROG}: collector stopped after {plural(seen[0], 'event')} in "
          f"{plural(collector.request_count(), 'request')}", file=sys.stderr, flush=True)
    return EXIT_OK


ANSWER_GRACE = 2.0
"""Seconds the last request (the one that reached ``--max-events``) gets to receive its 202
before the collector stops: its connection's thread ends once the client hangs up; a
client that keeps the connection open is waited for this long."""


def _let_it_answer(thread: threading.Thread | None) -> None:
    """Wait (bounded) for the server thread that reached ``--max-events`` to answer and finish,
    so stopping the collector does not cut that request's 202 short."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(ANSWER_GRACE)
