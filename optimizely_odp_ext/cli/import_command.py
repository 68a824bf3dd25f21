"""``optimizely-odp import FILE``: send historical events from JSON lines or CSV at full speed,
with live progress, resumable after an interruption, refused rows in a reject file.

The command reads rows (:mod:`~optimizely_odp_ext.cli.import_rows`), cuts them into
batches of up to 500 events, hands them to a :class:`~optimizely_odp_ext.cli.import_sender.Sender`
(several requests in flight over one keep-alive session), and records what ODP
acknowledged in a checkpoint (:mod:`~optimizely_odp_ext.cli.import_checkpoint`) beside the
file. Ctrl-C or SIGTERM stops it cleanly (requests under way finish, the checkpoint is
saved; a second Ctrl-C quits at once); the same command then resumes where it stopped.

Standard input (``-``) cannot be resumed: a pipe cannot be read again from an offset, so
no checkpoint is written. Its idempotence ids come from ``--source-id`` (printed when it is
made up), so a rerun with the same input and the same ``--source-id`` sends events ODP
recognises as duplicates.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import uuid
from typing import IO

from optimizely_odp_ext import compat
from optimizely_odp_ext.cli.common import (
    DEFAULT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    pairs,
    positive_float,
    positive_int,
)
from optimizely_odp_ext.cli.import_checkpoint import (
    CHECKPOINT_SUFFIX,
    REJECTS_SUFFIX,
)
from optimizely_odp_ext.cli.import_loop import Importer
from optimizely_odp_ext.cli.import_rows import (
    FORMATS,
    RowRules,
    guess_format,
)
from optimizely_odp_ext.cli.progress import add_progress_argument
from optimizely_odp_ext.cli.session import Session, add_source_arguments, direct_destination, wants_direct
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.settings import SETTINGS_BY_NAME

MAX_BATCH_EVENTS = int(SETTINGS_BY_NAME["batch_size"].maximum or 500)
DEFAULT_IN_FLIGHT = int(SETTINGS_BY_NAME["max_in_flight"].default)
DEFAULT_RETRY_FOR = 300.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               verbose: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "import", parents=[verbose], help="send historical events from a JSON lines or CSV file",
        description="Send every row of FILE (JSON lines, or CSV with a header) as an ODP event, several "
        "requests at a time, with live progress on stderr. ODP's acknowledgements are recorded in "
        f"FILE{CHECKPOINT_SUFFIX}, so the same command resumes an interrupted import without resending "
        f"them; refused rows go to FILE{REJECTS_SUFFIX} with the reason. Exits 1 if any row was refused "
        "or not sent.",
        epilog="CSV columns: action, type, id.NAME (an identifier), data.NAME (a data field, read like send "
        "--data); others need --map COLUMN=TARGET (TARGET: action, type, id.NAME, data.NAME, or - to "
        "leave the column out). Empty cells are left out. JSON lines: {\"action\": ..., \"type\": ..., "
        "\"identifiers\": {...}, \"data\": {...}}.")
    command.add_argument("file", metavar="FILE", help="the rows to send; - for standard input")
    command.add_argument("--format", choices=FORMATS, help="jsonl or csv (default: from FILE's extension; "
                         "jsonl for standard input)")
    command.add_argument("--map", dest="mapping", action="append", default=[], metavar="COLUMN=TARGET",
                         help="what a CSV column is: action, type, id.NAME, data.NAME or - (repeatable)")
    command.add_argument("--action", help="the action of rows that have none")
    command.add_argument("--type", help="the event type of rows that have none (default fullstack)")
    add_source_arguments(command, allow_host=True)
    command.add_argument("--batch-size", type=_batch_size, default=MAX_BATCH_EVENTS, metavar="N",
                         help=f"events per request, 1 to {MAX_BATCH_EVENTS} (default %(default)s)")
    command.add_argument("--in-flight", type=_in_flight, default=DEFAULT_IN_FLIGHT, metavar="N",
                         help="requests under way at once (default %(default)s)")
    command.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                         help="seconds to wait for the datafile, and for each answer (default %(default)g)")
    command.add_argument("--retry-for", type=positive_float, default=DEFAULT_RETRY_FOR, metavar="SECONDS",
                         help="stop (resumably) when ODP has not accepted a request for this long "
                         "(default %(default)g)")
    command.add_argument("--checkpoint", metavar="PATH",
                         help=f"where to keep progress (default FILE{CHECKPOINT_SUFFIX})")
    command.add_argument("--rejects", metavar="PATH", help=f"where refused rows go (default FILE{REJECTS_SUFFIX})")
    command.add_argument("--source-id", metavar="TEXT", help="standard input only: what idempotence ids are "
                         "derived from (default: made up and printed)")
    add_progress_argument(command)
    command.set_defaults(handler=run)


def _batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH_EVENTS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH_EVENTS} (ODP's limit), not {value}")
    return value


def _in_flight(text: str) -> int:
    value = positive_int(text)
    limit = int(SETTINGS_BY_NAME["max_in_flight"].maximum or 64)
    if value > limit:
        raise argparse.ArgumentTypeError(f"must be at most {limit}, not {value}")
    return value


# ---------------------------------------------------------------------------- the input


class Input:
    """The file (or standard input) being imported, and what identifies it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.stdin = args.file == "-"
        self.name = "standard input" if self.stdin else args.file
        format: str | None = args.format or ("jsonl" if self.stdin else guess_format(args.file))
        if format is None:
            raise CliError(f"say what {args.file} holds: --format jsonl or --format csv", EXIT_USAGE)
        self.format = format
        self.total: int | None = None
        if self.stdin:
            if args.checkpoint:
                raise CliError("standard input cannot be resumed (a pipe cannot be read again from an offset): "
                               "save it to a file to use a checkpoint", EXIT_USAGE)
            self.key = args.source_id or uuid.uuid4().hex
            self.path = ""
        else:
            if args.source_id:
                raise CliError("--source-id is for standard input; a file's idempotence ids come from its "
                               "content", EXIT_USAGE)
            self.path = os.path.abspath(args.file)
            self.key, lines = _identify(args.file)
            self.total = max(lines - (1 if self.format == "csv" else 0), 0)

    def open(self) -> IO[bytes]:
        if self.stdin:
            return sys.stdin.buffer
        try:
            return open(self.path, "rb")
        except OSError as error:
            raise CliError(f"cannot read {self.name}: {error.strerror}", EXIT_USAGE) from None


def _identify(path: str) -> tuple[str, int]:
    """The file's SHA-256 (what its idempotence ids derive from) and its number of lines. Blocks
    (reads the file once, about a second per GB)."""
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory", EXIT_USAGE)
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", EXIT_USAGE) from None
    return digest.hexdigest(), lines + (0 if last == b"\n" else 1)


def _destination(args: argparse.Namespace) -> OdpIntegration:
    """Where the events go: ``--host``/``--api-key``, or the datafile's ODP integration. Blocks
    (a datafile fetch, up to ``--timeout``)."""
    if wants_direct(args):
        return direct_destination(args)
    session = Session(args, with_manager=False)
    try:
        config = session.require_datafile()
    finally:
        session.close()
    integration = compat.integration_of(config)
    if integration is None:
        raise CliError(f"the datafile from {session.label} has no ODP integration: nowhere to send the events")
    return integration


# ---------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
    """Import the file; raises :class:`CliError` unless every row was delivered. Blocks."""
    mapping = dict(pairs(args.mapping, "--map"))
    source = Input(args)
    rules = RowRules(source.key, args.action, args.type, mapping)
    stream = source.open()
    try:
        return Importer(args, source, rules, stream, lambda: _destination(args)).run()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


