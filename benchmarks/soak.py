"""Long runs by hand (not in CI): an outage side by side with the official client, a kill -9
restart on the durable spool, and a soak with random faults.

Run from the repository root::

    PYTHONPATH=. python benchmarks/soak.py outage                  # ~1 min: 20 s of 503, ours vs official
    PYTHONPATH=. python benchmarks/soak.py outage --repeat 10      # the same 10 times, one row per run
    PYTHONPATH=. python benchmarks/soak.py spool-restart           # ~11 min: 10 min outage, SIGKILL mid-way
    PYTHONPATH=. python benchmarks/soak.py spool-restart --outage-minutes 1   # quick check
    PYTHONPATH=. python benchmarks/soak.py soak --minutes 5 --rate 500 --seed 1
    ... --write                                                    # also put the tables in RESULTS.md

Every client runs in its own subprocess (this file with ``--child``) and sends paced events
(``send_odp_event("soak", ..., data={"proc": <tag>, "n": <call number>})``) from one thread
between the parent's ``GO`` and ``STOP`` lines on its stdin; it prints what its calls
returned (``ACC calls accepted``) and its ``odp_stats()`` (``STATS {...}``) on stdout, and one
``END {...}`` line after it closed. The parent runs one :class:`OdpCollector` on 127.0.0.1,
injects the faults on its own clock, counts what arrives by idempotence id (its ``on_event``
hook), and samples the child's RSS from ``/proc/<pid>/status``. Nothing leaves 127.0.0.1.

``--write`` replaces only this script's section of RESULTS.md (between ``<!-- soak:start -->``
and ``<!-- soak:end -->``), and in it only the scenario that was run; bench.py's section stays.
"""

# ruff: noqa: RUF001  (the report uses the multiplication and minus signs on purpose)
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

API_KEY = "k"
ACTION = "soak"
WARMUP_ACTION = "soak_warmup"
WARMUP_EVENTS = 5
TICK = 0.01
"""The child's pacing step: events due within it are sent together."""
SCENARIOS = ("outage", "spool-restart", "soak")
LABELS = {"official": "official optimizely-sdk", "ours": "OdpOptimizely"}
MiB = 1024 * 1024


# ============================================================================ which code ran

CODE_SEEN: dict[str, str] = {}
"""Hash of the package sources each client said it runs -> the first client that said it. Other
people may edit the working tree during a long run: this tells which code each run measured."""


def source_hash() -> str:
    """A short hash of every ``optimizely_odp_ext/**/*.py`` as it is on disk now."""
    import hashlib

    digest = hashlib.sha256()
    package = ROOT / "optimizely_odp_ext"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_state() -> str:
    """HEAD and whether the package has uncommitted changes (read-only git commands)."""
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "optimizely_odp_ext")
    return f"git HEAD {head}" + (", with uncommitted changes in optimizely_odp_ext/" if dirty else ", clean")


# ============================================================================ child process


def run_child(args: argparse.Namespace) -> None:
    """Build one client, say READY, send paced events from GO to STOP, end it, say END."""
    import logging

    from optimizely.logger import SimpleLogger
    from optimizely.optimizely import Optimizely

    from optimizely_odp_ext import BatchEventManager, OdpOptimizely
    from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile

    kind: str = args.child
    datafile = json.dumps(sample_datafile(host=args.url, api_key=API_KEY))
    client: Any
    if kind == "ours":
        # Default settings; only the spool path when the scenario asks for it. Errors (e.g. events
        # left undelivered at close) go to stderr, which the parent shows.
        manager = BatchEventManager(spool_path=args.spool) if args.spool else None
        client = OdpOptimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher(),
                               logger=SimpleLogger(min_level=logging.ERROR), odp_event_manager=manager)
    else:
        client = Optimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher())
    send = client.send_odp_event

    def stats() -> dict[str, Any]:
        if kind == "ours":
            return dict(client.odp_stats())
        return {"queued": client.odp_manager.event_manager.event_queue.qsize()}

    for i in range(args.warmup):
        send(WARMUP_ACTION, {"fs_user_id": f"warmup-{i}"}, data={"proc": args.tag, "n": i})
    print("READY " + json.dumps({"stats": stats(), "code": source_hash()}), flush=True)

    go, stop = threading.Event(), threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "GO":
                go.set()
            elif word == "STOP":
                stop.set()
        go.set()  # the parent went away: stop sending and end
        stop.set()

    threading.Thread(target=read_commands, name="soak-stdin", daemon=True).start()
    go.wait()

    calls = accepted = 0
    reported = (0, 0)
    t0 = time.monotonic()
    next_stats = t0
    while not stop.is_set():
        due = int((time.monotonic() - t0) * args.rate) + 1
        while calls < due:
            result = send(ACTION, {"fs_user_id": f"user-{calls % 5000}"}, data={"proc": args.tag, "n": calls})
            calls += 1
            if result is None or result:  # the official client returns None
                accepted += 1
        now = time.monotonic()
        if (calls, accepted) != reported and (args.progress_every <= 0 or now >= next_stats):
            print(f"ACC {calls} {accepted}", flush=True)
            reported = (calls, accepted)
        if now >= next_stats:
            print("STATS " + json.dumps(stats()), flush=True)
            next_stats = now + args.stats_every
        stop.wait(max(TICK, t0 + calls / args.rate - time.monotonic()))
    print(f"ACC {calls} {accepted}", flush=True)

    ending: dict[str, Any] = {}

    def end() -> None:
        started = time.monotonic()
        if kind == "ours":
            if args.flush_timeout > 0:
                ending["flushed"] = client.flush(args.flush_timeout)
            client.close()  # default close_timeout
        else:
            from bench import close_official

            ending["close_returned_early"] = close_official(client)
        ending["end_s"] = time.monotonic() - started
        ending["done"] = True

    closer = threading.Thread(target=end, name="soak-close", daemon=True)
    closer.start()
    closer.join(args.end_timeout)
    report = {"calls": calls, "accepted": accepted, "timed_out": not ending.get("done", False), **ending,
              "stats": stats()}
    print("END " + json.dumps(report), flush=True)
    os._exit(0)  # don't let a timed-out close or atexit hooks hold the exit


# ============================================================================ parent: plumbing


class Tracker:
    """The collector's ``on_event`` hook: counts accepted events by idempotence id and by the
    sending process's tag (``data.proc``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: set[str] = set()
        self.total: Counter[str] = Counter()
        self.unique: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.numbers: dict[str, set[int]] = {}
        self.warmup = 0
        self.last_delivery = 0.0
        self.times: dict[str, list[float]] = {}
        """Per process tag, ``time.monotonic()`` of each accepted event."""

    def __call__(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        proc = str(data.get("proc"))
        with self._lock:
            self.last_delivery = time.monotonic()
            if event.get("action") != ACTION:
                self.warmup += 1
                return
            self.total[proc] += 1
            self.times.setdefault(proc, []).append(self.last_delivery)
            key = str(data.get("idempotence_id"))
            if key in self.ids:
                self.duplicates[proc] += 1
                return
            self.ids.add(key)
            self.unique[proc] += 1
            self.numbers.setdefault(proc, set()).add(int(data.get("n", -1)))

    def snapshot(self) -> tuple[int, int]:
        """(unique events delivered, duplicates), all processes."""
        with self._lock:
            return sum(self.unique.values()), sum(self.duplicates.values())

    def first_delivery_after(self, proc: str, moment: float) -> float | None:
        with self._lock:
            return next((t for t in self.times.get(proc, ()) if t >= moment), None)

    def delivered_numbers(self, proc: str) -> set[int]:
        with self._lock:
            return set(self.numbers.get(proc, ()))


class Child:
    """One client subprocess and what it said on stdout."""

    def __init__(self, kind: str, tag: str, url: str, *, rate: float, spool: str | None = None,
                 warmup: int = 0, progress_every: float = 1.0, stats_every: float = 1.0,
                 flush_timeout: float = 0.0, end_timeout: float = 60.0) -> None:
        self.kind, self.tag = kind, tag
        command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--tag", tag, "--url", url,
                   "--rate", str(rate), "--warmup", str(warmup), "--progress-every", str(progress_every),
                   "--stats-every", str(stats_every), "--flush-timeout", str(flush_timeout),
                   "--end-timeout", str(end_timeout)]
        if spool:
            command += ["--spool", spool]
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=ROOT)
        self.pid = self.process.pid
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.ready_info: dict[str, Any] = {}
        self.ready_at = 0.0
        self.calls = self.accepted = 0
        self.stats: dict[str, Any] = {}
        self.end: dict[str, Any] | None = None
        self.killed = False
        threading.Thread(target=self._read, name=f"soak-read-{tag}", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            word, _, rest = line.partition(" ")
            with self._lock:
                if word == "ACC":
                    calls, accepted = rest.split()
                    self.calls, self.accepted = int(calls), int(accepted)
                elif word == "STATS":
                    self.stats = json.loads(rest)
                elif word == "END":
                    self.end = json.loads(rest)
                elif word == "READY":
                    self.ready_info = json.loads(rest)
                    CODE_SEEN.setdefault(str(self.ready_info.get("code")), self.tag)
                    self.ready_at = time.monotonic()
                    self.ready.set()
                else:
                    print(f"    [{self.tag}] {line}", file=sys.stderr, flush=True)

    def progress(self) -> tuple[int, int, dict[str, Any]]:
        """(calls, accepted, last stats) as last reported."""
        with self._lock:
            return self.calls, self.accepted, dict(self.stats)

    def say(self, word: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(word + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.ready.wait(timeout):
            raise TimeoutError(f"child {self.tag} did not say READY in {timeout:.0f} s")

    def rss_mib(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def sigkill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait()
        self.killed = True

    def exited(self) -> bool:
        return self.process.poll() is not None

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def wait_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def wait_for_end(children: list[Child], tracker: Tracker, timeout: float, settle: float = 1.0) -> None:
    """Until every child exited and no event arrived for ``settle`` seconds (at most ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(child.exited() for child in children) and time.monotonic() - tracker.last_delivery >= settle:
            return
        time.sleep(0.05)
    for child in children:
        if not child.exited():
            print(f"    [{child.tag}] still running after {timeout:.0f} s: killed", file=sys.stderr)
            child.cleanup()


def collector_with(tracker: Tracker) -> Any:
    from optimizely_odp_ext.testing import OdpCollector

    collector = OdpCollector(api_key=API_KEY, record=False)  # the tracker keeps what we need
    collector.on_event = tracker
    return collector


@contextmanager
def children_cleaned(children: list[Child]) -> Iterator[list[Child]]:
    try:
        yield children
    finally:
        for child in children:
            child.cleanup()


def _int(value: float) -> str:
    return f"{value:,.0f}"


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _dropped(stats: dict[str, Any]) -> str:
    dropped = stats.get("dropped") or {}
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(dropped.items())) or "none"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """One scenario's markdown (printed, and written with --write)."""

    title: str
    lines: list[str] = field(default_factory=list)
    ours_lost: int = 0
    summary: list[str] = field(default_factory=list)
    """One row of the repeats table (outage)."""
    sent: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def markdown(self, header: list[str]) -> str:
        return "\n".join([f"## {self.title}", "", *header, "", *self.lines]).rstrip() + "\n"


# ============================================================================ scenario: outage


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
                       "ours: sent", "ours: delivered", "ours: queued", "ours: retried"], samples), "")
    ours, official = children[1], children[0]
    oe, fe = ours.end or {}, official.end or {}
    notes = [
        f"- Ours: default settings (`OdpOptimizely(datafile=...)`), ended with `close()` "
        f"(default `close_timeout` 10 s), which took {oe.get('end_s', float('nan')):.2f} s. "
        f"odp_stats at the end: retried {oe.get('stats', {}).get('retried', 0):,}, requests "
        f"{oe.get('stats', {}).get('requests', 0):,}, dropped: {_dropped(oe.get('stats', {}))}.",
        "- The official: `close()`"
        + (", which returned before draining (queue full); the script called its event manager's `stop()` again "
           "until it drained, crediting it with everything it could deliver (as bench.py does)"
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
            row.append(_int(stats.get("retried", 0)))
    print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return row


# ============================================================================ scenario: spool-restart


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
                    kill_info["b_recovered"] = b.ready_info.get("stats", {}).get("accepted", 0)
                    now = time.monotonic() - t0
                    print(f"  t={now:6.1f} s  B (pid {b.pid}) ready {kill_info['b_ready_s']:.2f} s after the "
                          f"kill with {kill_info['b_recovered']:,} events from the spool; GO",
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
    report.add(_table(
        ["accepted (A reported + B)", "delivered (unique ids)", "lost", "duplicates",
         "A: accepted but not yet reported at the kill, delivered", "B: ready after the kill",
         "B: events recovered from the spool", "peak spool (db + WAL)", "peak RSS A / B MiB"],
        [[f"{_int(accepted)} ({_int(a_reported)} + {_int(b_accepted)})", _int(delivered),
          f"{_int(lost)} ({_pct(lost, accepted)})", _int(duplicates), _int(a_unreported),
          f"{kill_info['b_ready_s']:.2f} s", _int(kill_info["b_recovered"]),
          f"{peak_spool['spool_db'] + peak_spool['spool_wal']:.1f} MiB at t={peak_spool['t']:.0f} s",
          f"{_mib(max(rss_a, default=None))} / {_mib(max(rss_b, default=None))}"]]), "")
    report.add(f"Timeline (t from the first send; 503 from t={outage_start:g} s to t={outage_end:g} s; A killed "
               f"with SIGKILL at t={kill_info['t']:.0f} s, B started at once on the same spool; B stops sending "
               f"at t={stop_at:g} s, then `flush({args.flush_timeout:g})` and `close()`):", "")
    report.add(_table(["t s", "phase", "process", "accepted (A + B)", "delivered",
                       "undelivered in the process (queued + in flight)", "spool db MiB", "spool WAL MiB",
                       "RSS MiB"], printed), "")
    b_stats = b_end.get("stats", {})
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
        f"{b_stats.get('delivered', 0):,} (including A's events recovered from the spool), retried "
        f"{b_stats.get('retried', 0):,}, requests {b_stats.get('requests', 0):,}, dropped: {_dropped(b_stats)}. "
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


# ============================================================================ scenario: soak


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
        f"{end.get('end_s', float('nan')):.1f} s. odp_stats: delivered {stats.get('delivered', 0):,}, retried "
        f"{stats.get('retried', 0):,}, batches {stats.get('batches_sent', 0):,}, requests "
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


# ============================================================================ RESULTS.md


SECTION_INTRO = """# Long runs: outage, kill -9 restart, soak (benchmarks/soak.py)

Each scenario was run by hand with the command shown; its subsection is replaced when it runs
again with `--write`. The machine is shared and noisy (2 cores): rates are approximate (the
clients pace themselves in 10 ms steps); counts are exact. Delivered = unique idempotence ids
accepted (202) by the local collector; lost = accepted (or sent) − delivered."""


def write_results(path: Path, scenario: str, content: str) -> None:
    """Replace this scenario's subsection inside the soak section of ``path``."""
    import bench

    def update(section: str | None) -> str:
        parts = {name: bench.section_text(section or "", f"soak-{name}") for name in SCENARIOS}
        parts[scenario] = content
        blocks = [SECTION_INTRO]
        blocks += [bench.replace_section("", f"soak-{name}", text).strip()
                   for name, text in ((n, parts[n]) for n in SCENARIOS) if text]
        return "\n\n".join(blocks)

    bench.update_results_section(path, "soak", update)


def header_lines(args: argparse.Namespace) -> list[str]:
    import bench

    info = bench.machine_info()
    command = "PYTHONPATH=. python benchmarks/soak.py " + shlex.join(sys.argv[1:])
    return [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {info['cpus']} CPUs, {info['cpu_model']}; {info['platform']}",
        f"- Python {info['python']}, optimizely-sdk {info['optimizely_sdk']}, "
        f"optimizely-odp-ext {info['optimizely_odp_ext']}",
        f"- Command (from the repository root): `{command}`",
        f"- Code: {args.git_state} at the start; package sources (hash) run by the clients: "
        + ", ".join(f"`{code}`" for code in CODE_SEEN)
        + (" — **the package changed on disk during this run**" if len(CODE_SEEN) > 1 else ""),
        f"- Whole run: {time.monotonic() - args.started:.0f} s",
    ]


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", choices=SCENARIOS)
    parser.add_argument("--rate", type=float, default=None,
                        help="events per second per client (default: 100; soak 500)")
    parser.add_argument("--write", action="store_true", help="put the results in RESULTS.md (its own section)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    outage = parser.add_argument_group("outage")
    outage.add_argument("--duration", type=float, default=30.0, help="seconds of sending (default 30)")
    outage.add_argument("--outage-start", type=float, default=5.0, help="503 from this second (default 5)")
    outage.add_argument("--outage-seconds", type=float, default=20.0, help="seconds of 503 (default 20)")
    outage.add_argument("--repeat", type=int, default=1, help="run the outage scenario this many times (default 1)")
    outage.add_argument("--end-timeout", type=float, default=90.0,
                        help="seconds each client may take to close (default 90)")
    restart = parser.add_argument_group("spool-restart")
    restart.add_argument("--outage-minutes", type=float, default=10.0, help="minutes of 503 (default 10)")
    restart.add_argument("--healthy-before", type=float, default=5.0,
                         help="healthy seconds before the outage (default 5)")
    restart.add_argument("--tail", type=float, default=10.0,
                         help="seconds the second process keeps sending after the outage (default 10)")
    restart.add_argument("--sample-every", type=float, default=None,
                         help="seconds between timeline rows (default: outage 5; spool-restart about 25 rows)")
    soak = parser.add_argument_group("soak")
    soak.add_argument("--minutes", type=float, default=5.0, help="minutes of sending (default 5)")
    soak.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    soak.add_argument("--print-every", type=float, default=10.0, help="seconds between progress rows (default 10)")
    parser.add_argument("--flush-timeout", type=float, default=120.0,
                        help="spool-restart and soak: seconds ours may flush before close() (default 120)")
    # child mode (internal)
    parser.add_argument("--child", choices=("ours", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--progress-every", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--stats-every", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.started = time.monotonic()
    args.git_state = "" if args.child else git_state()

    if args.child:
        if not args.url or not args.url.startswith(("http://127.", "http://[::1]")):
            parser.error("--child needs a loopback --url")
        run_child(args)
        return 0
    if not args.scenario:
        parser.error(f"choose a scenario: {', '.join(SCENARIOS)}")
    if args.rate is None:
        args.rate = 500.0 if args.scenario == "soak" else 100.0

    if args.scenario == "outage":
        if args.sample_every is None:
            args.sample_every = 5.0
        report = outage_runs(args)
    elif args.scenario == "spool-restart":
        report = scenario_spool_restart(args)
    else:
        report = scenario_soak(args)

    text = report.markdown(header_lines(args))
    print("\n" + text, flush=True)
    if report.ours_lost:
        print(f"!! OdpOptimizely lost {report.ours_lost:,} events in this run (see the notes)", file=sys.stderr)
    if args.write:
        write_results(args.results, args.scenario, text)
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
