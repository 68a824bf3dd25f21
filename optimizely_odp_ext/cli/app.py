"""The entry point: the command line's parser, and every failure turned into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Callable, NoReturn

from optimizely_odp_ext import __version__, compat
from optimizely_odp_ext.cli import collector, doctor, import_command, relay, send, spool
from optimizely_odp_ext.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CliError,
    error,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Blocks until the command is done. Never raises (``--help`` and ``--version`` return 0).
    When stdout's reader goes away (``| head``) the command stops quietly with
    :data:`EXIT_BROKEN_PIPE`, as a Unix tool ended by SIGPIPE would.
    """
    code = _run(sys.argv[1:] if argv is None else argv)
    if not _flush_stdout():
        return EXIT_BROKEN_PIPE
    return code


def _run(argv: Sequence[str]) -> int:
    arguments = list(argv)
    verbose = "-v" in arguments or "--verbose" in arguments
    try:
        args = build_parser().parse_args(arguments)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except CliError as failure:
        error(str(failure))
        return failure.code
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # a print to stdout after its reader (| head) went away
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except SystemExit as exit:  # argparse's --help and --version
        return exit.code if isinstance(exit.code, int) else EXIT_OK if exit.code is None else EXIT_USAGE
    except Exception as failure:  # the last resort: never a traceback unless asked for
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with --verbose for the traceback)"
        error(f"internal error: {type(failure).__name__}: {failure}{hint}")
        return EXIT_INTERNAL


def _flush_stdout() -> bool:
    """Flush stdout; False when its reader went away (then stdout goes to /dev/null, so the
    interpreter's own flush at exit is quiet too)."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # a reader that went away (| head), or a closed stream
        _silence_stdout()
        return False
    return True


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (in-process use): nothing to do
        pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (via :class:`CliError`)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line; each subcommand sets ``handler``. Non-blocking."""
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log the SDK at DEBUG level to stderr")
    parser = _Parser(prog=PROG, description="Send, check and collect Optimizely Data Platform (ODP) events.",
                     epilog="Exit codes: 0 success, 1 failed, 2 bad usage or input, 70 internal error, "
                     "130 interrupted, 141 stdout closed early (| head).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the SDK at DEBUG level to stderr")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} (optimizely-sdk {compat.SDK_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (send, doctor, import_command, collector, spool, relay):
        command.add_parser(commands, verbose)
    return parser
