"""The ``optimizely-odp`` command: send an event, check a setup, import a backfill, run a local
collector or a fleet's relay, manage a spool.

Usage::

    optimizely-odp [-v] send ACTION SOURCE --id KEY=VALUE [--id ...] [--type TYPE]
                   [--data KEY=VALUE ...] [--data-json JSON] [--set NAME=VALUE ...] [--timeout S]
    optimizely-odp [-v] doctor [SOURCE] [--odp-disabled] [--set NAME=VALUE ...]
                   [--send-test-event] [--timeout S]
    optimizely-odp [-v] import FILE|- SOURCE [--format jsonl|csv] [--map COLUMN=TARGET ...]
                   [--action ACTION] [--type TYPE] [--batch-size N] [--in-flight N] [--timeout S]
                   [--retry-for S] [--checkpoint PATH] [--rejects PATH] [--source-id TEXT]
                   [--progress-interval S]
    optimizely-odp collector [--port N] [--api-key KEY] [--jsonl FILE] [--quiet]
                   [--max-events N] [--exit-after S]
    optimizely-odp relay [URL] [--stream KEY] [--group NAME] [--consumer NAME]
                   [--claim-after S] [--status-every S] [--drain-timeout S] [--set NAME=VALUE ...]
    optimizely-odp spool stats PATH|URL [--json]
    optimizely-odp spool replay PATH|URL [--batch-size N] [--timeout S] [--progress-interval S]
    optimizely-odp spool purge PATH|URL [--yes]

    PATH: a SQLite spool (spool_path); URL: a fleet's Redis stream (spool_url, with
    [--stream KEY] [--group NAME] [--claim-after S]).

    SOURCE: --datafile PATH | --sdk-key KEY [--datafile-url URL] | --datafile-url URL
            | --host URL --api-key KEY (send and import: straight to that host)

Exit codes: 0 success; 1 the operation failed (event not delivered, ODP not usable,
events left in the spool, rows refused or not sent); 2 bad usage or input; 70 internal
error; 130 interrupted; 141 stdout's reader went away (``| head``), quietly.
Errors are one line on stderr, ``optimizely-odp: error: ...``; ``--verbose`` adds the
SDK's DEBUG log (and a traceback for an internal error) on stderr.

``send`` and ``doctor`` build an :class:`~optimizely_odp_ext.OdpOptimizely` exactly as an
application would (the datafile from a file, or polled with an SDK key), with an event
dispatcher that keeps the base SDK's own events in memory. Every command blocks until it
is done; ``collector`` runs in the foreground until Ctrl-C, SIGTERM, ``--max-events`` or
``--exit-after``.
"""

from __future__ import annotations

from optimizely_odp_ext.cli.app import main

__all__ = ["main"]
