"""The entry point: the command line's parser, and every failure turned into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Callable, NoReturn

from optimizely_odp_ext import __version__, compat
from optimizely_odp_ext.cli import collector, doctor, relay, send, spool
from optimizely_odp_ext.cli.common import (
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
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
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
    except SystemExit as exit:  # argparse's --help and --version
        return exit.code if isinstance(exit.code, int) else EXIT_OK if exit.code is None else EXIT_USAGE
    except Exception as failure:  # the last resort: never a traceback unless asked for
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with --verbose for the traceback)"
        error(f"internal error: {type(failure).__name__}: {failure}{hint}")
        return EXIT_INTERNAL
    finally:
        _flush_stdout()


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # a reader that went away (| head), or a closed stream
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


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
                     "130 interrupted.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the SDK at DEBUG level to stderr")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} (optimizely-sdk {compat.SDK_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (send, doctor, collector, spool, relay):
        command.add_parser(commands, verbose)
    return parser
