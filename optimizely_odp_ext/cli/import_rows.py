"""The rows of an ``import`` file (JSON lines or CSV), each turned into an ODP event's JSON
or the reason it cannot be one.

JSON lines: one event per line, ``{"action": ..., "type": ..., "identifiers": {...},
"data": {...}}``; blank lines are skipped. CSV: a header row, then one event per row; a
column is the event's ``action`` or ``type``, an identifier (``id.NAME``), a data field
(``data.NAME``), or what ``--map COLUMN=TARGET`` says (``-`` ignores it). Empty cells are
left out; a data cell is read like ``send --data`` (``9.5`` a number, ``007`` text).

Every row is validated by :func:`optimizely_odp_ext.event.build_event`, with the rules of
``send_odp_event``, and gets a deterministic idempotence id (:func:`idempotence_id`)
unless its data has one. Row numbers are 1-based: the line for JSON lines, the record
after the header for CSV. Offsets are bytes from the start of the file, so an interrupted
import can start again just after the last resolved row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from optimizely_odp_ext.cli.common import EXIT_USAGE, CliError, not_json, parse_value
from optimizely_odp_ext.event import InvalidEventError, build_event

FORMATS = ("jsonl", "csv")
INVALID_ROW = "invalidRow"
"""The reason for a row that cannot be read at all (not JSON, wrong number of CSV fields, not UTF-8)."""
EVENT_FIELDS = ("action", "type", "identifiers", "data")
IGNORED = "-"
_ID_NAMESPACE = uuid.UUID("5d7f3f0e-6b1d-5a4e-9c33-0bd1e1a0d0c5")
_BOM = b"\xef\xbb\xbf"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID5_SET = (5 << 76) | (0x8000 << 48)


def idempotence_id(source_key: str, number: int) -> str:
    """The idempotence id of row ``number`` of the input known as ``source_key`` (a digest
    of the file's content): the same on every run, so ODP recognises a row sent twice.

    It is ``str(uuid.uuid5(_ID_NAMESPACE, f"{source_key}:{number}"))``, computed without
    building UUID objects (a few times cheaper, once per row)."""
    return _uuid5(_id_prefix(source_key), number)


def _id_prefix(source_key: str) -> bytes:
    return _ID_NAMESPACE.bytes + f"{source_key}:".encode()


def _uuid5(prefix: bytes, number: int) -> str:
    digest = hashlib.sha1(prefix + str(number).encode()).digest()
    digits = "%032x" % (int.from_bytes(digest[:16], "big") & _UUID_CLEAR | _UUID5_SET)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class Row(NamedTuple):
    """One row, read and judged."""

    number: int
    end: int
    """Byte offset just after the row."""
    event: bytes | None
    """The event's JSON, when the row is a valid event."""
    reason: str = ""
    """Why it is not (a ``DiscardReason`` value or :data:`INVALID_ROW`); "" for a blank line."""
    message: str = ""
    input: Any = None
    """The row as read, for the reject file: a JSON value, the raw text, or a CSV record as a dict."""


@dataclass
class RowRules:
    """How a row becomes an event: defaults, the CSV column mapping, the idempotence ids."""

    source_key: str
    action: str | None = None
    """``--action``: the action of rows that have none."""
    type: str | None = None
    """``--type``: the type of rows that have none (else ``fullstack``)."""
    mapping: dict[str, str] = field(default_factory=dict)
    """``--map COLUMN=TARGET``."""
    _prefix: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        self._prefix = _id_prefix(self.source_key)

    def event(self, number: int, action: object, identifiers: object, type: object, data: object) -> bytes:
        """The event's JSON, as ``send_odp_event`` would build it, with the row's idempotence
        id unless its data has one. Raises :class:`InvalidEventError`."""
        if isinstance(data, dict):
            data = {"idempotence_id": _uuid5(self._prefix, number), **data}
        elif data is None:
            data = {"idempotence_id": _uuid5(self._prefix, number)}
        return build_event(action, identifiers, type, data).to_json()

    def options(self, format: str) -> dict[str, Any]:
        """What shapes the events, as a checkpoint records it (a resumed import must match)."""
        return {"format": format, "action": self.action, "type": self.type,
                "mapping": dict(sorted(self.mapping.items()))}


def guess_format(path: str) -> str | None:
    """``csv`` for ``*.csv``, ``jsonl`` for ``*.jsonl``/``*.ndjson``/``*.json``, else None."""
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json", ".jsonlines")):
        return "jsonl"
    return None


def _lines(stream: IO[bytes], offset: int) -> Iterator[tuple[bytes, int]]:
    """The stream's lines (with their end of line) and the offset just after each."""
    for line in stream:
        if offset == 0 and line.startswith(_BOM):
            offset += len(_BOM)
            line = line[len(_BOM):]
        offset += len(line)
        yield line, offset


# ---------------------------------------------------------------------------- JSON lines


def jsonl_rows(stream: IO[bytes], rules: RowRules, *, start_number: int = 0, start_offset: int = 0) -> Iterator[Row]:
    """Rows of a JSON lines stream positioned at ``start_offset``, just after row ``start_number``."""
    number = start_number
    for line, end in _lines(stream, start_offset):
        number += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Row(number, end, None, INVALID_ROW, f"not UTF-8 ({error.reason} at byte {error.start})",
                      line.decode("utf-8", "replace").rstrip("\r\n"))
            continue
        if not text.strip():
            yield Row(number, end, None)
            continue
        yield _jsonl_row(number, end, text.rstrip("\r\n"), rules)


def _jsonl_row(number: int, end: int, text: str, rules: RowRules) -> Row:
    try:
        value = json.loads(text, parse_constant=not_json)
    except ValueError as error:
        return Row(number, end, None, INVALID_ROW, f"not valid JSON: {error}", text)
    if not isinstance(value, dict):
        return Row(number, end, None, INVALID_ROW, f"not a JSON object (a {type(value).__name__})", value)
    unknown = [key for key in value if key not in EVENT_FIELDS]
    if unknown:
        return Row(number, end, None, INVALID_ROW, f"unknown field {unknown[0]!r} (an ODP event has "
                   f"{', '.join(EVENT_FIELDS)})", value)
    action = value.get("action") if value.get("action") is not None else rules.action
    event_type = value.get("type") or rules.type
    try:
        event = rules.event(number, action, value.get("identifiers"), event_type, value.get("data"))
    except InvalidEventError as invalid:
        return Row(number, end, None, str(invalid.reason), invalid.message, value)
    return Row(number, end, event)


# ---------------------------------------------------------------------------- CSV


class Columns(NamedTuple):
    """What each column of a CSV file is: ``action``, ``type``, ``id.NAME``, ``data.NAME`` or ``-``."""

    names: list[str]
    targets: list[str]

    def describe(self) -> dict[str, str]:
        return dict(zip(self.names, self.targets))


def csv_columns(header: Sequence[str], rules: RowRules, source: str) -> Columns:
    """The targets of a CSV header, or a usage error naming the column that has none."""
    mapping = dict(rules.mapping)
    targets: list[str] = []
    for name in header:
        target = mapping.pop(name, None) or _target(name)
        if target is None:
            raise CliError(f"{source}: column {name!r} is not an ODP event field: name it action, type, "
                           f"id.NAME or data.NAME, or map it (--map '{name}=data.{name}', or --map '{name}=-' "
                           "to leave it out)", EXIT_USAGE)
        if target != IGNORED and _target(target) is None:
            raise CliError(f"--map {name}={target}: the target must be action, type, id.NAME, data.NAME or -",
                           EXIT_USAGE)
        targets.append(_target(target) or IGNORED)
    if mapping:
        raise CliError(f"--map names a column {source} does not have: {', '.join(sorted(mapping))} "
                       f"(its columns: {', '.join(header)})", EXIT_USAGE)
    used = [target for target in targets if target != IGNORED]
    duplicated = sorted({target for target in used if used.count(target) > 1})
    if duplicated:
        raise CliError(f"{source}: several columns go to {', '.join(duplicated)}", EXIT_USAGE)
    if "action" not in targets and rules.action is None:
        raise CliError(f"{source} has no action column: add one or give every row the same action with --action",
                       EXIT_USAGE)
    if not any(target.startswith("id.") for target in targets):
        raise CliError(f"{source} has no identifier column (id.NAME, e.g. id.fs_user_id)", EXIT_USAGE)
    return Columns(list(header), targets)


def _target(name: str) -> str | None:
    if name in ("action", "type", IGNORED):
        return name
    for prefix, canonical in (("id.", "id."), ("identifiers.", "id."), ("data.", "data.")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return canonical + name[len(prefix):]
    return None


class _TrackedLines:
    """Feeds ``csv.reader`` decoded lines and remembers where the last one ended (the csv
    module reads no further than the record it returns), and whether a line since the last
    look was not UTF-8 (decoded with surrogate escapes, so the record can be shown)."""

    def __init__(self, lines: Iterable[tuple[bytes, int]], end: int) -> None:
        self._lines = iter(lines)
        self.end = end
        self.not_utf8 = False

    def __iter__(self) -> Iterator[str]:
        for line, end in self._lines:
            self.end = end
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                self.not_utf8 = True
                yield line.decode("utf-8", "surrogateescape")


def read_csv_header(stream: IO[bytes], source: str) -> tuple[list[str], int]:
    """The header record of a CSV stream at its start, and the offset just after it."""
    lines = _TrackedLines(_lines(stream, 0), 0)
    try:
        header = next(csv.reader(lines))
    except StopIteration:
        raise CliError(f"{source} is empty: a CSV import needs a header row", EXIT_USAGE) from None
    except csv.Error as error:
        raise CliError(f"{source}: the header row is not valid CSV: {error}", EXIT_USAGE) from None
    if lines.not_utf8:
        raise CliError(f"{source}: the header row is not UTF-8", EXIT_USAGE)
    return [name.strip() for name in header], lines.end


def csv_rows(stream: IO[bytes], columns: Columns, rules: RowRules, *, start_number: int,
             start_offset: int) -> Iterator[Row]:
    """Rows of a CSV stream positioned at ``start_offset`` (after the header, or just after
    row ``start_number``)."""
    lines = _TrackedLines(_lines(stream, start_offset), start_offset)
    reader = csv.reader(lines)
    number = start_number
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            number += 1
            yield Row(number, lines.end, None, INVALID_ROW, f"not valid CSV: {error}", None)
            continue
        number += 1
        not_utf8, lines.not_utf8 = lines.not_utf8, False
        if not record or (len(record) == 1 and not record[0].strip() and len(columns.names) > 1):
            yield Row(number, lines.end, None)
            continue
        if not_utf8:
            text = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in record]
            yield Row(number, lines.end, None, INVALID_ROW, "not UTF-8", dict(zip(columns.names, text)))
            continue
        yield _csv_row(number, lines.end, record, columns, rules)


def _csv_row(number: int, end: int, record: list[str], columns: Columns, rules: RowRules) -> Row:
    if len(record) != len(columns.names):
        return Row(number, end, None, INVALID_ROW, f"{len(record)} fields where the header has "
                   f"{len(columns.names)}", record)
    action: str | None = rules.action
    event_type: str | None = rules.type
    identifiers: dict[str, str] = {}
    data: dict[str, Any] = {}
    for target, cell in zip(columns.targets, record):
        if not cell:
            continue
        if target == "action":
            action = cell
        elif target == "type":
            event_type = cell
        elif target.startswith("id."):
            identifiers[target[3:]] = cell
        elif target.startswith("data."):
            data[target[5:]] = parse_value(cell)
    try:
        event = rules.event(number, action, identifiers, event_type, data)
    except InvalidEventError as invalid:
        return Row(number, end, None, str(invalid.reason), invalid.message, dict(zip(columns.names, record)))
    return Row(number, end, event)
