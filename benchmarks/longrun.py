"""What the long runs share (outage.py, spool_restart.py, soak.py): the client process that sends
paced events, the collector's tracker, the report and its part of RESULTS.md.

Every client runs in its own subprocess (``python benchmarks/longrun.py --child ...``) and sends
paced events (``send_odp_event("soak", ..., data={"proc": <tag>, "n": <call number>})``) from one
thread between the parent's ``GO`` and ``STOP`` lines on its stdin; it prints what its calls
returned (``ACC calls accepted``) and its ``odp_stats()`` (``STATS {...}``) on stdout, and one
``END {...}`` line after it closed. The parent runs one :class:`OdpCollector` on 127.0.0.1,
injects the faults on its own clock, counts what arrives by idempotence id (its ``on_event``
hook), and samples the child's RSS from ``/proc/<pid>/status``. Nothing leaves 127.0.0.1.

``--write`` replaces only the long runs' section of RESULTS.md (between ``<!-- soak:start -->``
and ``<!-- soak:end -->``), and in it only the scenario that was run; run.py's section stays.
"""

# ruff: noqa: RUF001  (the report uses the multiplication and minus signs on purpose)
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

API_KEY = common.API_KEY
ACTION = "soak"
WARMUP_ACTION = "soak_warmup"
WARMUP_EVENTS = 5
TICK = 0.01
"""The child's pacing step: events due within it are sent together."""
SCENARIOS = ("outage", "spool-restart", "soak")
LABELS = {"official": "official optimizely-sdk", "ours": "OdpOptimizely"}
MiB = 1024 * 1024
ROOT = common.ROOT


# ============================================================================ which code ran

CODE_SEEN: dict[str, str] = {}
"""Hash of the package sources each client said it runs -> the first client that said it. Other
people may edit the working tree during a long run: this tells which code each run measured."""

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
    print("READY " + json.dumps({"stats": stats(), "code": common.source_hash()}), flush=True)

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
            from common import close_official

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



# ============================================================================ RESULTS.md


SECTION_INTRO = """# Long runs: outage, kill -9 restart, soak (benchmarks/outage.py, spool_restart.py, soak.py)

Each scenario was run by hand with the command shown; its subsection is replaced when it runs
again with `--write`. The machine is shared and noisy (2 cores): rates are approximate (the
clients pace themselves in 10 ms steps); counts are exact. Delivered = unique idempotence ids
accepted (202) by the local collector; lost = accepted (or sent) − delivered. Each subsection keeps
the command and the code of the run that wrote it (runs before the split of the benchmarks were
`soak.py <scenario>`, now `outage.py`, `spool_restart.py`, `soak.py`)."""


def write_results(path: Path, scenario: str, content: str) -> None:
    """Replace this scenario's subsection inside the long runs' section of ``path``."""
    def update(section: str | None) -> str:
        parts = {name: common.section_text(section or "", f"soak-{name}") for name in SCENARIOS}
        parts[scenario] = content
        blocks = [SECTION_INTRO]
        blocks += [common.replace_section("", f"soak-{name}", text).strip()
                   for name, text in ((n, parts[n]) for n in SCENARIOS) if text]
        return "\n\n".join(blocks)

    common.update_results_section(path, "soak", update)


def header_lines(args: argparse.Namespace) -> list[str]:
    info = common.machine_info()
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + shlex.join(sys.argv[1:])
    return [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {info['cpus']} CPUs, {info['cpu_model']}; {info['platform']}",
        f"- Python {info['python']}, optimizely-sdk {info['optimizely_sdk']}, "
        f"optimizely-odp-ext {info['optimizely_odp_ext']}",
        f"- Command (from the repository root): `{command.strip()}`",
        f"- Code: {args.git_state} at the start; package sources (hash) run by the clients: "
        + ", ".join(f"`{code}`" for code in CODE_SEEN)
        + (" — **the package changed on disk during this run**" if len(CODE_SEEN) > 1 else ""),
        f"- Load average (1/5/15 min) at the end: {common.load_average()}",
        f"- Whole run: {time.monotonic() - args.started:.0f} s",
    ]


# ============================================================================ command lines


def parser_for(description: str, default_rate: float) -> argparse.ArgumentParser:
    """The options every long run takes; the scenario adds its own."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=default_rate,
                        help=f"events per second per client (default {default_rate:g})")
    parser.add_argument("--write", action="store_true", help="put the results in RESULTS.md (its own section)")
    parser.add_argument("--results", type=Path, default=common.HERE / "RESULTS.md")
    parser.add_argument("--sample-every", type=float, default=None, help="seconds between timeline rows")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.started = time.monotonic()
    args.git_state = common.git_state()
    return args


def finish(args: argparse.Namespace, scenario: str, report: Report) -> int:
    """Print the scenario's report, and write it into RESULTS.md with ``--write``."""
    text = report.markdown(header_lines(args))
    print("\n" + text, flush=True)
    if report.ours_lost:
        print(f"!! OdpOptimizely lost {report.ours_lost:,} events in this run (see the notes)", file=sys.stderr)
    if args.write:
        write_results(args.results, scenario, text)
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


def child_main(argv: list[str] | None = None) -> int:
    """``longrun.py --child ours|official ...``: one client process (see :func:`run_child`)."""
    parser = argparse.ArgumentParser(description="a long run's client process (started by the long runs)")
    parser.add_argument("--child", choices=("ours", "official"), required=True)
    parser.add_argument("--tag", default="")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--spool")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--progress-every", type=float, default=1.0)
    parser.add_argument("--stats-every", type=float, default=1.0)
    parser.add_argument("--flush-timeout", type=float, default=0.0)
    parser.add_argument("--end-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://[::1]")):
        parser.error("--child needs a loopback --url")
    run_child(args)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
