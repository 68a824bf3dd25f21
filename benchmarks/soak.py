"""The soak: ≈500 events/s for 5 minutes while the collector goes through random faults (seeded):
503 bursts, 429 with Retry-After, dropped connections, 2 s delays, total outages.

Run by hand from the repository root (not in CI)::

    python benchmarks/soak.py --minutes 5 --rate 500 --seed 1
    ... --write                                  # also put the tables in RESULTS.md

See :mod:`longrun` for how the client runs and what is counted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from longrun import (
    Child,
    Report,
    Tracker,
    _dropped,
    _int,
    _mib,
    _pct,
    _table,
    children_cleaned,
    collector_with,
    finish,
    parse,
    parser_for,
    wait_for_end,
)


@dataclass
class Fault:
    start: float
    end: float
    kind: str
    detail: str
    apply: Callable[[], None]
    clear: Callable[[], None]


FAULT_KINDS = ("503 burst", "429 with Retry-After", "dropped connections", "2 s delay", "total outage")


def fault_schedule(collector: Any, rng: random.Random, run_seconds: float) -> list[Fault]:
    """Faults one after the other, each kind once in every round of five (seeded order), with
    8-25 s of health between them; none in the first 15 s nor the last 40 s."""
    faults: list[Fault] = []
    t, limit = 15.0, run_seconds - 40.0
    bag: list[str] = []
    while True:
        if not bag:
            bag = list(FAULT_KINDS)
            rng.shuffle(bag)
        kind = bag.pop()
        fault: Fault
        if kind == "503 burst":
            duration = rng.uniform(3, 15)
            fault = Fault(t, t + duration, kind, "every request answered 503",
                          partial(collector.respond_with, 503), collector.reset_faults)
        elif kind == "429 with Retry-After":
            duration, wait = rng.uniform(5, 15), rng.choice((1, 2, 3, 5))
            fault = Fault(t, t + duration, kind, f"every request answered 429, Retry-After: {wait}",
                          partial(collector.respond_with, 429, retry_after=str(wait)), collector.reset_faults)
        elif kind == "dropped connections":
            duration, after_body = rng.uniform(3, 10), rng.random() < 0.5
            fault = Fault(t, t + duration, kind,
                          "every connection closed without an answer, "
                          + ("after reading the body" if after_body else "before reading the body"),
                          partial(collector.drop_connections, None, after_reading_body=after_body),
                          collector.reset_faults)
        elif kind == "2 s delay":
            duration = rng.uniform(10, 25)
            fault = Fault(t, t + duration, kind, "every answer delayed 2 s",
                          partial(collector.set_delay, 2.0), collector.reset_faults)
        else:
            duration = rng.uniform(5, 15)
            fault = Fault(t, t + duration, kind, "collector stopped (connection refused), then restarted",
                          collector.stop, collector.start)
        if fault.end > limit:
            break
        faults.append(fault)
        t = fault.end + rng.uniform(8, 25)
    return faults


def scenario_soak(args: argparse.Namespace) -> Report:
    tracker = Tracker()
    collector = collector_with(tracker)
    run_seconds = args.minutes * 60
    report = Report(f"Soak: {args.minutes:g} min at ≈{args.rate:g} events/s with random faults (seed {args.seed})")
    rows: list[list[str]] = []
    samples: list[tuple[float, float | None]] = []
    fault_log: list[list[str]] = []
    with collector:
        faults = fault_schedule(collector, random.Random(args.seed), run_seconds)
        child = Child("ours", "S", collector.url, rate=args.rate, progress_every=1.0, stats_every=0.1,
                      flush_timeout=args.flush_timeout, end_timeout=args.flush_timeout + 30)
        with children_cleaned([child]):
            child.wait_ready()
            child.say("GO")
            t0 = time.monotonic()
            print(f"  GO: {run_seconds:g} s at {args.rate:g}/s; {len(faults)} faults scheduled",
                  file=sys.stderr, flush=True)
            pending, active = list(faults), None
            next_sample, next_row = 1.0, args.print_every
            while True:
                now = time.monotonic() - t0
                if active is not None and now >= active.end:
                    active.clear()
                    print(f"  t={now:6.1f} s  fault over: {active.kind}", file=sys.stderr, flush=True)
                    active = None
                if active is None and pending and now >= pending[0].start:
                    active = pending.pop(0)
                    active.apply()
                    fault_log.append([f"{active.start:.0f}", f"{active.end - active.start:.1f}", active.kind,
                                      active.detail])
                    print(f"  t={now:6.1f} s  fault: {active.kind} ({active.detail}) for "
                          f"{active.end - active.start:.1f} s", file=sys.stderr, flush=True)
                if now >= run_seconds:
                    break
                if now >= next_sample:
                    samples.append((now, child.rss_mib()))
                    next_sample += 1.0
                if now >= next_row:
                    rows.append(_soak_row(now, child, tracker, active))
                    next_row += args.print_every
                time.sleep(0.02)
            if active is not None:
                active.clear()
            child.say("STOP")
            print(f"  t={time.monotonic() - t0:6.1f} s  STOP: flush({args.flush_timeout:g}) then close()",
                  file=sys.stderr, flush=True)
            wait_for_end([child], tracker, timeout=args.flush_timeout + 60)
            rows.append(_soak_row(time.monotonic() - t0, child, tracker, None, final=True))

    end = child.end or {}
    stats = end.get("stats", {})
    sent, accepted = end.get("calls", child.calls), end.get("accepted", child.accepted)
    delivered, duplicates = tracker.snapshot()
    lost = accepted - delivered
    report.ours_lost = max(0, lost)
    first = [rss for t, rss in samples if t < 60 and rss is not None]
    last = [rss for t, rss in samples if t >= run_seconds - 60 and rss is not None]
    peak = max((rss for _, rss in samples if rss is not None), default=None)
    bounded = None
    if first and last:
        growth = statistics.median(last) - statistics.median(first)
        bounded = growth <= max(5.0, 0.10 * statistics.median(first))
    report.add(_table(
        ["sent", "accepted", "delivered (unique ids)", "lost", "duplicates", "refused at the call",
         "RSS MiB first minute (median / max)", "RSS MiB last minute (median / max)", "RSS bounded"],
        [[_int(sent), _int(accepted), _int(delivered), f"{_int(lost)} ({_pct(lost, accepted)})", _int(duplicates),
          _int(sent - accepted),
          f"{_mib(statistics.median(first) if first else None)} / {_mib(max(first, default=None))}",
          f"{_mib(statistics.median(last) if last else None)} / {_mib(max(last, default=None))}",
          "n/a" if bounded is None else ("yes" if bounded else "**no**")]]), "")
    report.add("Faults injected by the parent (seeded schedule):", "")
    report.add(_table(["start t s", "lasted s", "fault", "what the collector did"], fault_log), "")
    report.add("Every ~10 s (accepted and queued from the client's own `odp_stats()`, delivered and duplicates "
               "at the collector, RSS of the client process):", "")
    report.add(_table(["t s", "accepted", "delivered", "queued", "in flight", "duplicates", "RSS MiB", "fault now"],
                      rows), "")
    report.add(
        f"- End: `flush({args.flush_timeout:g})` returned {end.get('flushed')}, then `close()`; ending took "
        f"{end.get('end_s', float('nan')):.1f} s. odp_stats: delivered {stats.get('delivered', 0):,}, retries "
        f"{stats.get('retries', 0):,}, batches {stats.get('batches_sent', 0):,}, requests "
        f"{stats.get('requests', 0):,}, dropped: {_dropped(stats)}.",
        f"- RSS: peak {_mib(peak)} MiB; 'bounded' means the last minute's median RSS is within "
        "max(5 MiB, 10%) of the first minute's median.",
        "- Duplicates can only come from a request the collector accepted but whose answer the client never "
        "got (the collector stopped between accepting and answering): at-least-once delivery.",
    )
    if report.ours_lost:
        report.add(f"- **Ours lost {report.ours_lost:,} events.** Dropped reasons: {_dropped(stats)}.")
    return report


def _soak_row(now: float, child: Child, tracker: Tracker, active: Fault | None, final: bool = False) -> list[str]:
    _calls, _accepted, stats = child.progress()
    if final and child.end:
        stats = child.end.get("stats", stats)
    delivered, duplicates = tracker.snapshot()
    row = ["end" if final else f"{now:.0f}", _int(stats.get("accepted", 0)), _int(delivered),
           _int(stats.get("queued", 0)), _int(stats.get("in_flight", 0)), _int(duplicates),
           _mib(None if final else child.rss_mib()), active.kind if active else ""]
    print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = parser_for(__doc__.split("\n\n")[0], 500.0)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of sending (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    parser.add_argument("--print-every", type=float, default=10.0, help="seconds between progress rows (default 10)")
    parser.add_argument("--flush-timeout", type=float, default=120.0,
                        help="seconds the client may flush before close() (default 120)")
    args = parse(parser, argv)
    return finish(args, "soak", scenario_soak(args))


if __name__ == "__main__":
    sys.exit(main())
