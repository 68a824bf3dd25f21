"""The loop of ``optimizely-odp import``: rows in, batches of up to 500 events out through a
:class:`~optimizely_odp_ext.cli.import_sender.Sender`, acknowledgements recorded in the
checkpoint, refused rows in the reject file, progress on stderr.

Ctrl-C or SIGTERM stops it cleanly: no new requests, those under way finish, the
checkpoint is saved (a second Ctrl-C quits at once; the checkpoint is then as of its last
save, at most :data:`CHECKPOINT_EVERY` old, and what ODP acknowledged since is sent again
with the same idempotence ids).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Callable

from optimizely_odp_ext.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    StopRequest,
    note,
    plural,
    seconds,
)
from optimizely_odp_ext.cli.import_checkpoint import CHECKPOINT_SUFFIX, REJECTS_SUFFIX, Checkpoint, RejectFile
from optimizely_odp_ext.cli.import_rows import (
    Columns,
    Row,
    RowRules,
    csv_columns,
    csv_rows,
    jsonl_rows,
    read_csv_header,
)
from optimizely_odp_ext.cli.import_sender import Batch, BatchResult, Item, Sender
from optimizely_odp_ext.cli.progress import Progress
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.result import DiscardReason
from optimizely_odp_ext.settings import SETTINGS_BY_NAME

if TYPE_CHECKING:
    from optimizely_odp_ext.cli.import_command import Input

MAX_BATCH_BYTES = int(SETTINGS_BY_NAME["max_batch_bytes"].default)
CHECKPOINT_EVERY = 0.5
"""Seconds between two checkpoint saves while the import runs (and one at the end)."""
_WAIT_STEP = 0.2


class Importer:
    """One run of an import: rows in, batches out, acknowledgements recorded. Everything here
    runs on the main thread (the :class:`Sender`'s workers only send)."""

    def __init__(self, args: argparse.Namespace, source: Input, rules: RowRules, stream: IO[bytes],
                 destination: Callable[[], OdpIntegration]) -> None:
        self.args = args
        self.source = source
        self.rules = rules
        self.stream = stream
        self.header_end = 0
        self.columns: Columns | None = None
        if source.format == "csv":
            header, self.header_end = read_csv_header(stream, source.name)
            self.columns = csv_columns(header, rules, source.name)
            rules.mapping = {name: target for name, target in self.columns.describe().items() if name != target}
        self.destination = destination()  # after the header is checked: usage errors come first
        self.checkpoint = self._checkpoint()
        base = source.path if not source.stdin else os.path.abspath("stdin")
        self.rejects = RejectFile(args.rejects or base + REJECTS_SUFFIX, self.checkpoint.reject_bytes)
        self.checkpoint.reject_bytes = self.rejects.size
        self.batch: list[Item] = []
        self.batch_bytes = 2
        self.unsent = 0
        self.read_all = False
        self.progress: Progress | None = None
        self.started = time.monotonic()

    def _checkpoint(self) -> Checkpoint:
        source, args = self.source, self.args
        path = "" if source.stdin else (args.checkpoint or source.path + CHECKPOINT_SUFFIX)
        fresh = Checkpoint(path, source.path or "-", source.key, self.rules.options(source.format),
                           self.destination.host)
        if source.stdin:
            note(f"reading standard input: no checkpoint (a pipe cannot be resumed); to send the same rows again "
                 f"with the same idempotence ids, use --source-id {source.key}")
            return fresh
        saved = Checkpoint.load(path)
        if saved is None:
            fresh.save()  # before the first request: a crash from now on leaves a checkpoint to resume
            return fresh
        problem = saved.mismatch(fresh)
        if problem:
            raise CliError(f"cannot resume from {path}: {problem}; delete it to import {source.name} from the "
                           "start", EXIT_USAGE)
        if not saved.complete:
            note(f"resuming from {path}: {plural(saved.resolution.resolved_count, 'row')} done "
                 f"({saved.delivered:,} delivered)")
        return saved

    # -- the loop ----------------------------------------------------------------------------
    @property
    def _progress(self) -> Progress:
        assert self.progress is not None, "the import is not running"
        return self.progress

    def run(self) -> int:
        checkpoint = self.checkpoint
        if checkpoint.complete:
            note(f"{self.source.name} was imported completely already ({checkpoint.path}); nothing sent "
                 "(delete the checkpoint to import it again)")
            return self._finish(interrupted=False)
        self.progress = progress = Progress("import", self.source.total, done=checkpoint.resolution.resolved_count,
                                            interval=self.args.progress_interval)
        self.sender = sender = Sender(self.destination, workers=self.args.in_flight, timeout=self.args.timeout,
                                      retry_for=self.args.retry_for)
        interrupted = False
        try:
            with StopRequest(on_request=sender.stop) as stop:
                self._read_and_send()
                if not sender.stopping.is_set() and self.batch:
                    self._submit()
                if stop.requested.is_set():
                    progress.warn("stopping: waiting for the requests under way (Ctrl-C again to quit now)")
                while sender.outstanding:
                    self._collect(_WAIT_STEP)
                interrupted = stop.requested.is_set()
            checkpoint.complete = self.read_all and not self.batch and not self.unsent
        finally:
            sender.close()
            progress.close()
            self.rejects.flush()
            checkpoint.reject_bytes = self.rejects.size
            if checkpoint.path:
                checkpoint.save()
            self.rejects.close()
        return self._finish(interrupted)

    def _rows(self) -> Iterator[Row]:
        resolution = self.checkpoint.resolution
        if self.source.stdin:
            start_number, start_offset = 0, 0
        else:
            start_number, start_offset = resolution.through, max(resolution.offset, self.header_end)
            self.stream.seek(start_offset)
        if self.columns is not None:
            return csv_rows(self.stream, self.columns, self.rules, start_number=start_number,
                            start_offset=start_offset)
        return jsonl_rows(self.stream, self.rules, start_number=start_number, start_offset=start_offset)

    def _read_and_send(self) -> None:
        resolution, sender, progress = self.checkpoint.resolution, self.sender, self._progress
        since_tick = 0
        for row in self._rows():
            if sender.stopping.is_set():
                return
            resolution.read(row.number, row.end)
            if resolution.is_resolved(row.number):
                resolution.resolve((row.number,))
                continue
            if row.event is not None:
                self._add(row)
            elif row.reason:
                self.rejects.write(row.number, row.reason, row.message, input=row.input)
                self._resolved_refused(row.number, row.reason)
            else:
                self.checkpoint.blank += 1
                resolution.resolve((row.number,))
                progress.advance(other=1)
            since_tick += 1
            if since_tick >= 1000:
                since_tick = 0
                self._collect(0)
        self.read_all = not sender.stopping.is_set()

    def _add(self, row: Row) -> None:
        assert row.event is not None
        size = len(row.event) + 1
        if self.batch and self.batch_bytes + size > MAX_BATCH_BYTES:
            self._submit()
        self.batch.append(Item(row.number, row.event))
        self.batch_bytes += size
        if len(self.batch) >= self.args.batch_size:
            self._submit()

    def _submit(self) -> None:
        self.sender.submit(Batch(self.batch))
        self.batch, self.batch_bytes = [], 2
        limit = 2 * self.args.in_flight  # one batch waiting per request under way keeps them all busy
        while self.sender.outstanding >= limit and not self.sender.stopping.is_set():
            self._collect(_WAIT_STEP)

    def _collect(self, timeout: float) -> None:
        """Record the batches that finished; show progress; save the checkpoint now and then."""
        checkpoint, progress = self.checkpoint, self._progress
        for result in self.sender.results(timeout) if self.sender.outstanding else []:
            self._record(result)
        progress.set_status(self.sender.status)
        progress.tick()
        if checkpoint.path:
            self.rejects.flush()
            checkpoint.reject_bytes = self.rejects.size
            checkpoint.save(every=CHECKPOINT_EVERY)

    def _record(self, result: BatchResult) -> None:
        checkpoint = self.checkpoint
        for item, answer in result.refused:
            self.rejects.write(item.row, DiscardReason.REJECTED.value, answer, event=json.loads(item.body))
            self._resolved_refused(item.row, DiscardReason.REJECTED.value)
        if result.delivered:
            checkpoint.delivered += len(result.delivered)
            checkpoint.resolution.resolve(item.row for item in result.delivered)
            self._progress.advance(delivered=len(result.delivered))
        self.unsent += len(result.unsent)

    def _resolved_refused(self, number: int, reason: str) -> None:
        refused = self.checkpoint.refused
        refused[reason] = refused.get(reason, 0) + 1
        self.checkpoint.resolution.resolve((number,))
        self._progress.advance(failed=1)

    # -- the end -----------------------------------------------------------------------------
    def _finish(self, interrupted: bool) -> int:
        checkpoint = self.checkpoint
        refused_total = sum(checkpoint.refused.values())
        elapsed = time.monotonic() - self.started
        speed = f", {self.progress.rate():,.0f} events/s" if self.progress is not None else ""
        summary = (f"import {self.source.name} -> {self.destination.host}: {checkpoint.delivered:,} delivered, "
                   f"{refused_total:,} refused")
        if checkpoint.blank:
            summary += f", {plural(checkpoint.blank, 'blank line')} skipped"
        print(f"{summary} ({seconds(elapsed)}{speed})")
        problems: list[str] = []
        if not checkpoint.complete:
            stopped = "interrupted" if interrupted else f"stopped: {self.sender.gave_up or 'unknown reason'}"
            resume = (f"run the same command to resume from {checkpoint.path}" if checkpoint.path
                      else "standard input cannot be resumed")
            first = checkpoint.resolution.through + 1
            problems.append(f"{stopped}; rows from {first:,} on are not all sent ({resume})")
        if refused_total:
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(checkpoint.refused.items()))
            problems.append(f"{plural(refused_total, 'row')} refused ({reasons}): see {self.rejects.path}")
        if problems:
            raise CliError("; ".join(problems), EXIT_INTERRUPTED if interrupted else EXIT_FAILED)
        return EXIT_OK
