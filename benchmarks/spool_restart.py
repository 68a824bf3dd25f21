"""Kill -9 and restart on the spool: a 10 min outage at ≈100 events/s; process A is killed with
SIGKILL half-way and process B starts at once on the same spool.

Run by hand from the repository root (not in CI)::

    python benchmarks/spool_restart.py                       # ~11 min
    python benchmarks/spool_restart.py --outage-minutes 1    # quick check
    ... --write                                              # also put the tables in RESULTS.md

See :mod:`longrun` for how the clients run and what is counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from longrun import (
    Child,
    MiB,
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


def _spool_sizes(path: str) -> tuple[float, float]:
    """(database MiB, WAL MiB)."""
    def size(p: str) -> float:
        try:
            return os.path.getsize(p) / MiB
        except OSError:
            return 0.0
    return size(path), size(path + "-wal")


def scenario_spool_restart(args: argparse.Namespace) -> Report:
    tracker = Tracker()
    collector = collector_with(tracker)
    outage = args.outage_minutes * 60
    healthy_before, tail = args.healthy_before, args.tail
    outage_start, outage_end = healthy_before, healthy_before + outage
    kill_at = healthy_before + outage / 2
    stop_at = outage_end + tail
    report = Report(f"Kill -9 and restart on the spool: {args.outage_minutes:g} min outage at ≈{args.rate:g} events/s")
    directory = tempfile.mkdtemp(prefix="odp-soak-spool-")
    spool = os.path.join(directory, "events.db")
    samples: list[dict[str, Any]] = []
    printed: list[list[str]] = []
    row_every = args.sample_every or max(10.0, round((stop_at + 30) / 25 / 10) * 10)
    kill_info: dict[str, Any] = {}
    with collector:
        a = Child("ours", "A", collector.url, rate=args.rate, spool=spool, progress_every=0, stats_every=1.0)
        b: Child | None = None
        with children_cleaned([a]) as living:
            a.wait_ready()
            a.say("GO")
            t0 = time.monotonic()
            print(f"  GO: spool {spool}; 503 from t={outage_start:g} s to t={outage_end:g} s; SIGKILL at "
                  f"t={kill_at:g} s; STOP at t={stop_at:g} s", file=sys.stderr, flush=True)
            faults_on = faults_off = False
            next_sample, next_row = 0.0, 0.0
            while True:
                now = time.monotonic() - t0
                if not faults_on and now >= outage_start:
                    collector.respond_with(503)
                    faults_on = True
                    print(f"  t={now:6.1f} s  collector: 503 on", file=sys.stderr, flush=True)
                if b is None and now >= kill_at:
                    calls, accepted, stats = a.progress()
                    rss = a.rss_mib()
                    a.sigkill()
                    killed_at = time.monotonic()
                    kill_info = {"t": now, "calls": calls, "accepted": accepted, "queued": stats.get("queued", 0),
                                 "rss": rss, "spool": _spool_sizes(spool)}
                    print(f"  t={now:6.1f} s  SIGKILL A (pid {a.pid}) after {accepted:,} accepted (reported)",
                          file=sys.stderr, flush=True)
                    b = Child("ours", "B", collector.url, rate=args.rate, spool=spool, progress_every=0,
                              stats_every=1.0, flush_timeout=args.flush_timeout,
                              end_timeout=args.flush_timeout + 30)
                    living.append(b)
                    b.wait_ready(120)
                    b.say("GO")
                    kill_info["b_ready_s"] = b.ready_at - killed_at
                    now = time.monotonic() - t0
                    print(f"  t={now:6.1f} s  B (pid {b.pid}) ready {kill_info['b_ready_s']:.2f} s after the "
                          "kill; GO",
                          file=sys.stderr, flush=True)
                if faults_on and not faults_off and now >= outage_end:
                    collector.reset_faults()
                    faults_off = True
                    print(f"  t={now:6.1f} s  collector: healthy", file=sys.stderr, flush=True)
                if now >= next_sample:
                    sample = _restart_sample(now, a, b, tracker, spool, outage_start, outage_end)
                    samples.append(sample)
                    next_sample += 1.0
                    if now >= next_row:
                        printed.append(_restart_row(sample))
                        next_row += row_every
                if now >= stop_at:
                    break
                time.sleep(0.02)
            assert b is not None
            b.say("STOP")
            print(f"  t={time.monotonic() - t0:6.1f} s  STOP B: flush({args.flush_timeout:g}) then close()",
                  file=sys.stderr, flush=True)
            deadline = time.monotonic() + args.flush_timeout + 60
            while not b.exited() and time.monotonic() < deadline:
                now = time.monotonic() - t0
                if now >= next_sample:
                    samples.append(_restart_sample(now, a, b, tracker, spool, outage_start, outage_end))
                    next_sample += 1.0
                time.sleep(0.05)
            wait_for_end([b], tracker, timeout=30)
            final = _restart_sample(time.monotonic() - t0, a, b, tracker, spool, outage_start, outage_end)
            final["phase"] = "after close"
            samples.append(final)
            printed.append(_restart_row(final))

    a_reported_calls, a_reported = kill_info["calls"], kill_info["accepted"]
    b_end = b.end or {}
    b_accepted = b_end.get("accepted", b.accepted)
    a_numbers = tracker.delivered_numbers("A")
    a_delivered_reported = sum(1 for n in a_numbers if n < a_reported_calls)
    a_unreported = sum(1 for n in a_numbers if n >= a_reported_calls)
    lost_a = a_reported - a_delivered_reported
    lost_b = b_accepted - tracker.unique["B"]
    accepted = a_reported + b_accepted
    delivered, duplicates = tracker.snapshot()
    lost = lost_a + lost_b
    report.ours_lost = max(0, lost)
    rss_a = [s["rss"] for s in samples if s["proc"] == "A" and s["rss"] is not None]
    rss_b = [s["rss"] for s in samples if s["proc"] == "B" and s["rss"] is not None]
    peak_spool = max(samples, key=lambda s: s["spool_db"] + s["spool_wal"])
    b_stats = b_end.get("stats", {})
    report.add(_table(
        ["accepted (A reported + B)", "delivered (unique ids)", "lost", "duplicates",
         "A: accepted but not yet reported at the kill, delivered", "B: ready after the kill",
         "B: events recovered from the spool", "peak spool (db + WAL)", "peak RSS A / B MiB"],
        [[f"{_int(accepted)} ({_int(a_reported)} + {_int(b_accepted)})", _int(delivered),
          f"{_int(lost)} ({_pct(lost, accepted)})", _int(duplicates), _int(a_unreported),
          f"{kill_info['b_ready_s']:.2f} s", _int(b_stats.get("recovered", 0)),
          f"{peak_spool['spool_db'] + peak_spool['spool_wal']:.1f} MiB at t={peak_spool['t']:.0f} s",
          f"{_mib(max(rss_a, default=None))} / {_mib(max(rss_b, default=None))}"]]), "")
    report.add(f"Timeline (t from the first send; 503 from t={outage_start:g} s to t={outage_end:g} s; A killed "
               f"with SIGKILL at t={kill_info['t']:.0f} s, B started at once on the same spool; B stops sending "
               f"at t={stop_at:g} s, then `flush({args.flush_timeout:g})` and `close()`):", "")
    report.add(_table(["t s", "phase", "process", "accepted (A + B)", "delivered",
                       "undelivered in the process (queued + in flight)", "spool db MiB", "spool WAL MiB",
                       "RSS MiB"], printed), "")
    notes = [
        f"- At the kill, A had reported {a_reported:,} accepted calls ({kill_info['queued']:,} queued at its "
        f"last stats line, spool {kill_info['spool'][0]:.1f} MiB + WAL {kill_info['spool'][1]:.1f} MiB, "
        f"RSS {_mib(kill_info['rss'])} MiB). {a_unreported:,} further event(s) of A were delivered: accepted "
        "(in the spool) in the last instant before the kill, after A's last progress line; they are not "
        "counted in 'accepted' above, nor as lost.",
        f"- Lost: A {lost_a:,} (reported accepted, never delivered), B {lost_b:,}. Duplicates {duplicates:,} "
        "(at-least-once: only events in flight at the kill may be sent twice; the kill was during the 503s, so "
        "none of them had been accepted).",
        f"- B's end: `flush()` returned {b_end.get('flushed')}, ending took "
        f"{b_end.get('end_s', float('nan')):.1f} s; odp_stats: delivered "
        f"{b_stats.get('delivered', 0):,} (including A's events recovered from the spool), retries "
        f"{b_stats.get('retries', 0):,}, requests {b_stats.get('requests', 0):,}, dropped: {_dropped(b_stats)}. "
        f"Spool after close: db {samples[-1]['spool_db']:.1f} MiB, WAL {samples[-1]['spool_wal']:.1f} MiB.",
        f"- RSS: A from {_mib(rss_a[0] if rss_a else None)} to {_mib(rss_a[-1] if rss_a else None)} MiB; "
        f"B from {_mib(rss_b[0] if rss_b else None)} to {_mib(rss_b[-1] if rss_b else None)} MiB "
        f"(peak {_mib(max(rss_b, default=None))}).",
    ]
    if report.ours_lost:
        notes.append(f"- **Ours lost {report.ours_lost:,} events.** B's dropped reasons: {_dropped(b_stats)}.")
    report.add(*notes)
    shutil.rmtree(directory, ignore_errors=True)
    return report


def _restart_sample(now: float, a: Child, b: Child | None, tracker: Tracker, spool: str,
                    outage_start: float, outage_end: float) -> dict[str, Any]:
    a_accepted = a.progress()[1]
    current = b if b is not None else a
    b_accepted = b.progress()[1] if b is not None else 0
    stats = current.progress()[2]
    if current.end:
        stats = current.end.get("stats", stats)
    delivered, _dups = tracker.snapshot()
    db, wal = _spool_sizes(spool)
    phase = "healthy" if now < outage_start or now >= outage_end else "503"
    return {"t": now, "phase": phase, "proc": current.tag, "accepted": a_accepted + b_accepted,
            "delivered": delivered, "queued": stats.get("queued", 0) + stats.get("in_flight", 0),
            "spool_db": db, "spool_wal": wal,
            "rss": None if current.exited() else current.rss_mib()}


def _restart_row(sample: dict[str, Any]) -> list[str]:
    row = [f"{sample['t']:.0f}", sample["phase"], sample["proc"], _int(sample["accepted"]),
           _int(sample["delivered"]), _int(sample["queued"]), f"{sample['spool_db']:.1f}",
           f"{sample['spool_wal']:.1f}", _mib(sample["rss"])]
    print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return row



def main(argv: list[str] | None = None) -> int:
    parser = parser_for(__doc__.split("\n\n")[0], 100.0)
    parser.add_argument("--outage-minutes", type=float, default=10.0, help="minutes of 503 (default 10)")
    parser.add_argument("--healthy-before", type=float, default=5.0,
                        help="healthy seconds before the outage (default 5)")
    parser.add_argument("--tail", type=float, default=10.0,
                        help="seconds the second process keeps sending after the outage (default 10)")
    parser.add_argument("--flush-timeout", type=float, default=120.0,
                        help="seconds B may flush before close() (default 120)")
    args = parse(parser, argv)
    return finish(args, "spool-restart", scenario_spool_restart(args))


if __name__ == "__main__":
    sys.exit(main())
