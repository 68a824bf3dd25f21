"""How far an ``import`` got: which rows are resolved, saved beside the input so that an
interrupted import resumes without resending what ODP acknowledged.

A row is *resolved* once ODP acknowledged it, or it was written to the reject file, or it
is a blank line. Batches complete out of order (several requests are in flight), so the
checkpoint keeps a watermark (every row up to ``through`` is resolved, and ``offset`` is
where the next one starts) plus the few rows beyond it that are resolved already.

The checkpoint (``FILE.odp-import.json``) is JSON, replaced atomically (written to a
temporary file beside it, then renamed over it), so a crash leaves the previous or the
new one, never half of one. It records the input's SHA-256, so a changed file is not
resumed by offset, and the reject file's length, which is cut back to it on resume (rows
rejected after the last save are judged again). It never holds the API key.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO, Any

from optimizely_odp_ext.cli.common import EXIT_USAGE, CliError

CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".odp-import.json"
REJECTS_SUFFIX = ".odp-import-rejects.jsonl"


class Resolution:
    """Which rows are resolved. Not thread-safe (the import's main thread owns it).

    Args:
        through: every row up to this number is resolved.
        offset: the byte offset just after row ``through``.
        beyond: rows after ``through`` resolved already (a resumed import's).
    """

    def __init__(self, through: int = 0, offset: int = 0, beyond: Iterable[int] = ()) -> None:
        self.through = through
        self.offset = offset
        self._beyond = {number for number in beyond if number > through}
        self._ends: dict[int, int] = {}

    def read(self, number: int, end: int) -> None:
        """Row ``number`` was read and ends at byte ``end``."""
        if number > self.through:
            self._ends[number] = end
            self._advance()

    def resolve(self, numbers: Iterable[int]) -> None:
        """These rows are resolved."""
        through = self.through
        self._beyond.update(number for number in numbers if number > through)
        self._advance()

    def is_resolved(self, number: int) -> bool:
        return number <= self.through or number in self._beyond

    @property
    def resolved_count(self) -> int:
        return self.through + len(self._beyond)

    def beyond(self) -> list[list[int]]:
        """The rows resolved after the watermark, as inclusive ``[first, last]`` ranges."""
        ranges: list[list[int]] = []
        for number in sorted(self._beyond):
            if ranges and ranges[-1][1] == number - 1:
                ranges[-1][1] = number
            else:
                ranges.append([number, number])
        return ranges

    def _advance(self) -> None:
        beyond, ends = self._beyond, self._ends
        while self.through + 1 in beyond and self.through + 1 in ends:
            self.through += 1
            beyond.discard(self.through)
            self.offset = ends.pop(self.through)


class Checkpoint:
    """The saved state of one file's import. Not thread-safe.

    Args:
        path: where it is saved.
        input: the input file (absolute path), and ``digest`` its SHA-256.
        options: what shapes the events (format, mapping, defaults): a resume must match.
        host: the ODP host the rows go to.
    """

    def __init__(self, path: str, input: str, digest: str, options: dict[str, Any], host: str) -> None:
        self.path = path
        self.input = input
        self.digest = digest
        self.options = options
        self.host = host
        self.resolution = Resolution()
        self.delivered = 0
        self.refused: dict[str, int] = {}
        self.blank = 0
        self.reject_bytes = 0
        self.complete = False
        self._saved_at = 0.0

    @classmethod
    def load(cls, path: str) -> Checkpoint | None:
        """The checkpoint saved at ``path``; None if there is none. Raises a usage
        :class:`CliError` if the file is not a checkpoint this version can read."""
        try:
            with open(path, encoding="utf-8") as file:
                saved = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CliError(f"cannot read the checkpoint {path}: {error}; delete it to start over", EXIT_USAGE) from None
        try:
            if saved["version"] != CHECKPOINT_VERSION:
                raise ValueError(f"version {saved['version']}")
            checkpoint = cls(path, saved["input"], saved["sha256"], saved["options"], saved["host"])
            resolved = saved["resolved"]
            checkpoint.resolution = Resolution(int(resolved["through"]), int(resolved["offset"]),
                                               (n for first, last in resolved["beyond"]
                                                for n in range(int(first), int(last) + 1)))
            checkpoint.delivered = int(saved["delivered"])
            checkpoint.refused = {str(k): int(v) for k, v in saved["refused"].items()}
            checkpoint.blank = int(saved["blank"])
            checkpoint.reject_bytes = int(saved["rejects_bytes"])
            checkpoint.complete = bool(saved["complete"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CliError(f"{path} is not an import checkpoint this version can read ({error}); delete it to "
                           "start over", EXIT_USAGE) from None
        return checkpoint

    def mismatch(self, other: Checkpoint) -> str:
        """Why this saved checkpoint does not fit the import ``other`` describes ("" if it does)."""
        if self.digest != other.digest:
            return f"{other.input} changed since the checkpoint was written (its SHA-256 differs)"
        if self.options != other.options:
            return (f"the checkpoint was written with other options ({_options(self.options)}; now "
                    f"{_options(other.options)})")
        if self.host != other.host:
            return f"the checkpoint was written for the ODP host {self.host}, not {other.host}"
        return ""

    def save(self, *, every: float = 0.0) -> None:
        """Write the checkpoint atomically; with ``every``, only if the last save is older. Blocks
        briefly (a small file)."""
        now = time.monotonic()
        if every and now - self._saved_at < every:
            return
        self._saved_at = now
        state = {
            "version": CHECKPOINT_VERSION,
            "input": self.input,
            "sha256": self.digest,
            "options": self.options,
            "host": self.host,
            "resolved": {"through": self.resolution.through, "offset": self.resolution.offset,
                         "beyond": self.resolution.beyond()},
            "delivered": self.delivered,
            "refused": self.refused,
            "blank": self.blank,
            "rejects_bytes": self.reject_bytes,
            "complete": self.complete,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(state, file, indent=1)
                file.write("\n")
            os.replace(temporary, self.path)
        except OSError as error:
            raise CliError(f"cannot write the checkpoint {self.path}: {error.strerror or error}") from None


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in options.items() if value not in (None, {}))


class RejectFile:
    """The rows that were refused, one JSON object a line, written on first use. Not
    thread-safe; writes block briefly (buffered file I/O).

    Args:
        path: the reject file.
        keep: bytes of an existing file to keep (a resumed import's); the rest is cut off.
            0 starts the file afresh.
    """

    def __init__(self, path: str, keep: int = 0) -> None:
        self.path = path
        self.size = 0
        self._file: IO[bytes] | None = None
        try:
            if keep and os.path.exists(path):
                actual = os.path.getsize(path)
                if actual > keep:
                    with open(path, "r+b") as file:
                        file.truncate(keep)
                self.size = min(actual, keep)
            elif os.path.exists(path):
                os.unlink(path)
        except OSError as error:
            raise CliError(f"cannot prepare the reject file {path}: {error.strerror or error}") from None

    def write(self, number: int, reason: str, message: str, **what: Any) -> None:
        """One refused row: its number, the reason, the message, and ``input`` or ``event``."""
        line = json.dumps({"row": number, "reason": reason, "message": message, **what},
                          ensure_ascii=False, default=str).encode("utf-8", "surrogateescape") + b"\n"
        try:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
            self._file.write(line)
        except OSError as error:
            raise CliError(f"cannot write the reject file {self.path}: {error.strerror or error}") from None
        self.size += len(line)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as error:
                raise CliError(f"cannot write the reject file {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
