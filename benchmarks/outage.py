"""The outage run: 20 s of 503 at ≈100 events/s, the official client and ours side by side.

Run by hand from the repository root (not in CI)::

    python benchmarks/outage.py                  # ~1 min
    python benchmarks/outage.py --repeat 10      # the same 10 times, one row per run
    ... --write                                  # also put the tables in RESULTS.md

See :mod:`longrun` for how the clients run and what is counted.
"""

# ruff: noqa: RUF001
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial

from longrun import (
    LABELS,
    WARMUP_EVENTS,
    Child,
    Report,
    Tracker,
    _dropped,
    _int,
    _pct,
    _table,
    children_cleaned,
    collector_with,
    finish,
    parse,
    parser_for,
    wait_for_end,
)


def scenario_outage(args: argparse.Namespace) -> Report:
    tracker = Tracker()
    collector = collector_with(tracker)
    outage_end = args.outage_start + args.outage_seconds
    report = Report(f"Outage: {args.outage_seconds:g} s of 503 at ≈{args.rate:g} events/s, "
                    "official vs OdpOptimizely side by side")
    samples: list[list[str]] = []
    with collector:
        children = [Child(kind, kind, collector.url, rate=args.rate, warmup=WARMUP_EVENTS, stats_every=0.1,
                          end_timeout=args.end_timeout) for kind in ("official", "ours")]
        with children_cleaned(children):
            for child in children:
                child.wait_ready()
            deadline = time.monotonic() + 15
            while tracker.warmup < WARMUP_EVENTS * len(children) and time.monotonic() < deadline:
                time.sleep(0.05)
            if tracker.warmup < WARMUP_EVENTS * len(children):
                raise RuntimeError(f"only {tracker.warmup} warm-up events arrived")
            for child in children:
                child.say("GO")
            t0 = time.monotonic()
            print(f"  GO: {args.duration:g} s at {args.rate:g}/s each; 503 from t={args.outage_start:g} s "
                  f"to t={outage_end:g} s", file=sys.stderr, flush=True)
            def stop_all() -> None:
                for child in children:
                    child.say("STOP")

            events: list[tuple[float, Callable[[], None], str]] = [
                (args.outage_start, partial(collector.respond_with, 503), "collector: 503 on"),
                (outage_end, collector.reset_faults, "collector: healthy"),
                (args.duration, stop_all, "STOP: clients end"),
            ]
            next_sample = 0.0
            while events or not all(c.exited() for c in children):
                now = time.monotonic() - t0
                while events and now >= events[0][0]:
                    _, action, label = events.pop(0)
                    action()
                    print(f"  t={now:5.1f} s  {label}", file=sys.stderr, flush=True)
                if now >= next_sample:
                    samples.append(_outage_sample(now, children, tracker, outage_end, args))
                    next_sample += args.sample_every
                if now > args.duration + args.end_timeout + 30:
                    break
                time.sleep(0.02)
            wait_for_end(children, tracker, timeout=args.end_timeout + 30)
            samples.append(_outage_sample(time.monotonic() - t0, children, tracker, outage_end, args, final=True))

    recovered = {child.kind: tracker.first_delivery_after(child.tag, t0 + outage_end) for child in children}
    rows: list[list[str]] = []
    for child in children:
        end = child.end or {}
        sent = end.get("calls", child.calls)
        delivered = tracker.unique[child.tag]
        lost = sent - delivered
        report.sent[child.kind], report.lost[child.kind] = sent, lost
        if child.kind == "ours":
            report.ours_lost = max(0, lost)
        rows.append([
            LABELS[child.kind], _int(sent),
            _int(end["accepted"]) if child.kind == "ours" and "accepted" in end else "n/a (returns None)",
            _int(delivered), f"{_int(lost)} ({_pct(lost, sent)})", _int(tracker.duplicates[child.tag]),
            f"{end['end_s']:.2f}" if "end_s" in end else "timed out",
            _dropped(end.get("stats", {})) if child.kind == "ours" else "n/a",
        ])
    report.add(_table(["client", "sent", "accepted at the call", "delivered (unique ids)", "lost",
                       "duplicates", "close() took s", "dropped (odp_stats)"], rows), "")
    report.add(f"Timeline (t from the first send; 503 from t={args.outage_start:g} s to t={outage_end:g} s, "
               f"sending stops at t={args.duration:g} s, then each client closes):", "")
    report.add(_table(["t s", "collector", "official: sent", "official: delivered", "official: its queue",
                       "ours: sent", "ours: delivered", "ours: queued", "ours: retries (requests)"], samples), "")
    ours, official = children[1], children[0]
    oe, fe = ours.end or {}, official.end or {}
    notes = [
        f"- Ours: default settings (`OdpOptimizely(datafile=...)`), ended with `close()` "
        f"(default `close_timeout` 10 s), which took {oe.get('end_s', float('nan')):.2f} s. "
        f"odp_stats at the end: retries {oe.get('stats', {}).get('retries', 0):,}, requests "
        f"{oe.get('stats', {}).get('requests', 0):,}, dropped: {_dropped(oe.get('stats', {}))}.",
        "- The official: `close()`"
        + (", which returned before draining (queue full); the script called its event manager's `stop()` again "
           "until it drained, crediting it with everything it could deliver (as run.py does)"
           if fe.get("close_returned_early") else "")
        + f"; ending took {fe.get('end_s', float('nan')):.2f} s. It retries a failed batch of 10 up to 3 times "
          "within ~1.4 s, then drops it; its 1,000-event queue drops new events when full.",
    ]
    first_ours = recovered["ours"]
    report.summary = [
        f"`{ours.ready_info.get('code')}`",
        f"{_int(report.lost['official'])} of {_int(report.sent['official'])} "
        f"({_pct(report.lost['official'], report.sent['official'])})",
        f"{_int(report.lost['ours'])} of {_int(report.sent['ours'])} "
        f"({_pct(report.lost['ours'], report.sent['ours'])})",
        _dropped(oe.get("stats", {})),
        "none" if first_ours is None else f"+{first_ours - t0 - outage_end:.1f}",
        f"{oe['end_s']:.2f}" if "end_s" in oe else "timed out",
    ]
    for kind, label in (("official", "the official"), ("ours", "ours")):
        moment = recovered[kind]
        notes.append(f"- First event of {label} accepted after the collector recovered (t={outage_end:g} s): "
                     + ("none" if moment is None else f"t={moment - t0:.1f} s ({moment - t0 - outage_end:.1f} s "
                        "after the recovery)") + ".")
    from optimizely_odp_ext.retry import HURRIED_BACKOFF

    notes.append(
        "- Ours after an outage: while ODP fails, one request at a time probes it with exponential backoff "
        "(0.5 s doubling, ×0.5–1 jitter, capped at 30 s), so without a flush the first delivery after the "
        "recovery can come up to ~30 s later. `flush()` and `close()` try at once and then at most "
        f"{HURRIED_BACKOFF:g} s apart (`retry.HURRIED_BACKOFF`), so `close()` never outwaits a recovered ODP. "
        "(Before that rule, a probe due after close()'s deadline made close() drop the backlog: 2 runs in 30.)"
    )
    if report.ours_lost:
        notes.append(f"- **Ours lost {report.ours_lost:,} events.** Dropped reasons reported by odp_stats: "
                     f"{_dropped(oe.get('stats', {}))}.")
    report.add(*notes)
    return report


def outage_runs(args: argparse.Namespace) -> Report:
    """``--repeat`` runs of the outage scenario: the first run in full (and the first in which ours lost
    events, if another), then one row per run."""
    runs: list[Report] = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"  run {i + 1} of {args.repeat}", file=sys.stderr, flush=True)
        runs.append(scenario_outage(args))
    first = runs[0]
    if args.repeat == 1:
        return first
    report = Report(f"{first.title} ({args.repeat} runs)")
    report.ours_lost = sum(run.ours_lost for run in runs)
    report.add("### Run 1", "", *first.lines, "")
    losing = next((i for i, run in enumerate(runs) if run.ours_lost), None)
    if losing:
        report.add(f"### Run {losing + 1}: the first run in which ours lost events", "", *runs[losing].lines, "")
    report.add(f"### All {args.repeat} runs", "")
    report.add(_table(["run", "ours: code", "official: lost", "ours: lost", "ours: dropped (odp_stats)",
                       "ours: first delivery after the recovery, s", "ours: close() took s"],
                      [[str(i + 1), *run.summary] for i, run in enumerate(runs)]), "")
    official_share = [run.lost["official"] / run.sent["official"] for run in runs if run.sent.get("official")]
    losing_runs = sum(1 for run in runs if run.ours_lost)
    report.add(
        f"- Ours lost events in **{losing_runs} of {args.repeat}** runs ({report.ours_lost:,} of "
        f"{sum(run.sent['ours'] for run in runs):,} sent in all); the official lost "
        f"{min(official_share):.1%}–{max(official_share):.1%} per run.")
    return report


def _outage_sample(now: float, children: list[Child], tracker: Tracker, outage_end: float,
                   args: argparse.Namespace, final: bool = False) -> list[str]:
    row = ["end" if final else f"{now:.0f}",
           "" if final else ("503" if args.outage_start <= now < outage_end else "healthy")]
    for child in children:
        calls, _accepted, stats = child.progress()
        if final and child.end:
            stats = child.end.get("stats", stats)
        row += [_int(calls), _int(tracker.unique[child.tag]), _int(stats.get("queued", 0))]
        if child.kind == "ours":
            row.append(_int(stats.get("retries", 0)))
    print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return row




def main(argv: list[str] | None = None) -> int:
    parser = parser_for(__doc__.split("\n\n")[0], 100.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending (default 30)")
    parser.add_argument("--outage-start", type=float, default=5.0, help="503 from this second (default 5)")
    parser.add_argument("--outage-seconds", type=float, default=20.0, help="seconds of 503 (default 20)")
    parser.add_argument("--repeat", type=int, default=1, help="run it this many times (default 1)")
    parser.add_argument("--end-timeout", type=float, default=90.0,
                        help="seconds each client may take to close (default 90)")
    args = parse(parser, argv)
    if args.sample_every is None:
        args.sample_every = 5.0
    return finish(args, "outage", outage_runs(args))


if __name__ == "__main__":
    sys.exit(main())
