"""What every ``optimizely-odp`` command shares: exit codes, the one-line error, and argument parsing."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

PROG = "optimizely-odp"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
DEFAULT_TIMEOUT = 10.0


class CliError(Exception):
    """An expected failure: reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def pairs(texts: Sequence[str], option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments of ``option`` as pairs; a usage error for any other form."""
    result = []
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise CliError(f"{option} expects KEY=VALUE, not {text!r}", EXIT_USAGE)
        result.append((key, value))
    return result
