"""Side-by-side benchmark: the official optimizely-sdk ODP events vs ``OdpOptimizely``.

Run by hand (not in CI), from the repository root::

    PYTHONPATH=. python benchmarks/bench.py            # full run (~2-3 minutes), writes RESULTS.md + chart
    PYTHONPATH=. python benchmarks/bench.py --quick    # smoke run (~30 s), prints only

The parent process runs one local :class:`OdpCollector` (127.0.0.1) per client run; each client
runs in its own subprocess (this file with ``--child``), so its RSS and CPU time are its own and
the collector does not share the client's GIL. The child reports one JSON line on stdout.

Per client run:

1. The child builds the client (datafile pointing at the collector, impressions kept in memory
   by ``RecordingEventDispatcher``), sends 10 warm-up events (ours: ``flush``), says READY.
2. The parent waits for the 10 events at the collector, clears its counters, says GO.
3. The child records ``time.time()`` (first send), then calls ``send_odp_event`` N times from
   one thread as fast as it returns, timing each call with ``perf_counter_ns``.
4. The child ends: ours ``flush(timeout)`` then ``close()``; the official ``close()`` (drains its
   queue). Both bounded by ``--timeout`` (the close runs in a thread joined with a timeout).
5. The parent records, with the collector's ``on_event`` hook, the ``time.time()`` of the last
   accepted event; it stops when the child has exited and the count stopped changing.

Drain rate = delivered / (last delivery at the collector - first send in the child).
Nothing leaves 127.0.0.1.
"""

# ruff: noqa: RUF001  (the report uses the multiplication and minus signs on purpose)
from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import queue
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API_KEY = "k"
WARMUP_EVENTS = 10
CLIENTS = ("official", "ours")
LABELS = {"official": "official optimizely-sdk", "ours": "OdpOptimizely"}


# ============================================================================ child process


def _rss_now_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def close_official(client: Any) -> bool:
    """Close the official client until its ODP queue is drained; True if close() returned early.

    With a full queue, the official close() cannot enqueue its shutdown signal: it logs "Error
    stopping ODP event queue" and returns while its thread still holds up to 1,000 events. Keep
    the process alive and stop again until it drains (as a long-lived app would), so the official
    is credited with everything it can deliver.
    """
    client.close()
    manager = client.odp_manager.event_manager
    returned_early = bool(manager.is_running)
    while manager.is_running:
        manager.stop()
        time.sleep(0.02)
    return returned_early


def run_child(kind: str, url: str, events: int, timeout: float) -> None:
    """Build one client, warm it up, run the timed sends, end it, print one JSON line."""
    from optimizely.optimizely import Optimizely

    from optimizely_odp_ext import OdpOptimizely
    from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile

    datafile = json.dumps(sample_datafile(host=url, api_key=API_KEY))
    client_class: Any = OdpOptimizely if kind == "ours" else Optimizely
    client: Any = client_class(datafile=datafile, event_dispatcher=RecordingEventDispatcher())
    send = client.send_odp_event

    for i in range(WARMUP_EVENTS):
        send("bench_warmup", {"fs_user_id": f"warmup-{i}"}, data={"n": i})
    if kind == "ours":
        client.flush(10.0)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        os._exit(2)

    durations = array.array("q", bytes(8 * events))
    accepted = 0
    clock = time.perf_counter_ns
    rss_before = _rss_now_kib()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    first_send = time.time()
    for i in range(events):
        identifiers = {"fs_user_id": f"user-{i}"}
        data: dict[str, Any] = {"n": i, "plan": "pro"}
        t0 = clock()
        result = send("bench", identifiers, data=data)
        t1 = clock()
        durations[i] = t1 - t0
        if result is None or result:  # the official client returns None
            accepted += 1
    last_send = time.time()

    ending: dict[str, Any] = {}

    def end() -> None:
        if kind == "ours":
            ending["flushed"] = client.flush(timeout)
            client.close(5.0)
        else:
            ending["close_returned_early"] = close_official(client)
        ending["done"] = True

    closer = threading.Thread(target=end, name="bench-close", daemon=True)
    closer.start()
    closer.join(timeout + (5.0 if kind == "ours" else 0.0))
    end_time = time.time()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)

    values = sorted(durations)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    report: dict[str, Any] = {
        "kind": kind,
        "events": events,
        "accepted_at_call": accepted if kind == "ours" else None,
        "first_send": first_send,
        "last_send": last_send,
        "end_time": end_time,
        "timed_out": not ending.get("done", False),
        "flushed": ending.get("flushed"),
        "close_returned_early": ending.get("close_returned_early"),
        "p50_us": _percentile(values, 0.50) / 1000,
        "p99_us": _percentile(values, 0.99) / 1000,
        "p999_us": _percentile(values, 0.999) / 1000,
        "max_us": values[-1] / 1000 if values else 0.0,
        "mean_us": sum(values) / len(values) / 1000 if values else 0.0,
        "send_phase_s": last_send - first_send,
        "cpu_s": cpu,
        "peak_rss_kib": usage_after.ru_maxrss,  # KiB on Linux
        "rss_before_kib": rss_before,
        "stats": client.odp_stats() if kind == "ours" else None,
    }
    print("RESULT " + json.dumps(report), flush=True)
    os._exit(0)  # don't let leftover (timed-out) threads or atexit hooks hold the exit


# ============================================================================ parent process


@dataclass
class Scenario:
    name: str
    latency_ms: int
    events: int
    kind: str  # "drain" or "burst"


@dataclass
class Run:
    client: str
    scenario: Scenario
    child: dict[str, Any]
    delivered: int
    requests: int
    connections: int
    first_delivery: float
    last_delivery: float
    killed: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.scenario.events

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    @property
    def drain_rate(self) -> float:
        span = self.last_delivery - self.child["first_send"]
        return self.delivered / span if self.delivered and span > 0 else 0.0

    @property
    def cpu_per_10k(self) -> float | None:
        return self.child["cpu_s"] / self.delivered * 10_000 if self.delivered else None


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _expect(lines: queue.Queue[str | None], prefix: str, deadline: float) -> str:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"child did not say {prefix} in time")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"child exited before saying {prefix}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
        print(f"    child: {line}", file=sys.stderr)


def run_client(client: str, scenario: Scenario, timeout: float, settle: float) -> Run:
    from optimizely_odp_ext.testing import OdpCollector

    collector = OdpCollector(api_key=API_KEY, record=False)
    last = [0.0, 0.0]  # first and last time.time() an event was accepted since GO

    def on_event(_event: dict[str, Any]) -> None:
        now = time.time()
        if not last[0]:
            last[0] = now
        last[1] = now

    collector.on_event = on_event
    with collector:
        collector.set_delay(scenario.latency_ms / 1000)
        command = [sys.executable, str(Path(__file__).resolve()), "--child", client, "--url", collector.url,
                   "--child-events", str(scenario.events), "--timeout", str(timeout)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert process.stdin is not None and process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
        killed = False
        try:
            _expect(lines, "READY", time.monotonic() + 60)
            if not collector.wait_for_events(WARMUP_EVENTS, 15.0):
                raise RuntimeError(f"{client}: the warm-up events never arrived")
            collector.clear()
            connections_before = collector.connections_opened()
            last[0] = last[1] = 0.0
            process.stdin.write("GO\n")
            process.stdin.flush()

            hard_deadline = time.monotonic() + timeout + 60 + scenario.events / 2000
            count, changed_at = 0, time.monotonic()
            while True:
                time.sleep(0.01)
                now_count = collector.event_count()
                if now_count != count:
                    count, changed_at = now_count, time.monotonic()
                if process.poll() is not None and time.monotonic() - changed_at >= settle:
                    break
                if time.monotonic() > hard_deadline:
                    process.kill()
                    killed = True
                    break
            result = json.loads(_expect(lines, "RESULT", time.monotonic() + 10)) if not killed else None
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if result is None:
            raise RuntimeError(f"{client} child was killed after {timeout + 60}s without a result")
        return Run(client, scenario, result, collector.event_count(), collector.request_count(),
                   collector.connections_opened() - connections_before, last[0], last[1], killed)


# ============================================================================ reporting


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_us(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}×" if value < 10 else f"{value:,.0f}×"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def scenario_table(runs: dict[str, Run]) -> str:
    header = ("| client | caller p50 µs | caller p99 µs | sent | delivered | lost | drain rate (events/s) "
              "| peak RSS MiB (growth) | CPU s per 10k delivered | requests | new TCP connections |")
    rows = [header, "| " + " | ".join(["---"] * 11) + " |"]
    for client in CLIENTS:
        run = runs[client]
        child = run.child
        growth = (child["peak_rss_kib"] - child["rss_before_kib"]) / 1024
        cpu = run.cpu_per_10k
        flag = " (timed out)" if child["timed_out"] else ""
        rows.append(
            f"| {LABELS[client]}{flag} | {_fmt_us(child['p50_us'])} | {_fmt_us(child['p99_us'])} "
            f"| {_fmt_int(run.sent)} | {_fmt_int(run.delivered)} "
            f"| {_fmt_int(run.lost)} ({run.lost / run.sent:.0%}) | {_fmt_int(run.drain_rate)} "
            f"| {child['peak_rss_kib'] / 1024:.1f} (+{growth:.1f}) "
            f"| {'n/a' if cpu is None else f'{cpu:.2f}'} | {_fmt_int(run.requests)} | {_fmt_int(run.connections)} |"
        )
    ours, official = runs["ours"], runs["official"]
    drain = _ratio(ours.drain_rate, official.drain_rate)
    p50 = _ratio(ours.child["p50_us"], official.child["p50_us"])
    p99 = _ratio(ours.child["p99_us"], official.child["p99_us"])
    rows.append(f"| **ours / official** | **{_fmt_ratio(p50)}** | **{_fmt_ratio(p99)}** | | | "
                f"| **{_fmt_ratio(drain)}** | | | | |")
    return "\n".join(rows)


def detail_lines(runs: dict[str, Run]) -> str:
    parts = []
    for client in CLIENTS:
        run = runs[client]
        c = run.child
        parts.append(
            f"{LABELS[client]}: send phase {c['send_phase_s']:.2f} s, p99.9 {_fmt_us(c['p999_us'])} µs, "
            f"max {_fmt_us(c['max_us'])} µs, mean {_fmt_us(c['mean_us'])} µs, "
            f"last delivery {run.last_delivery - c['first_send']:.2f} s after the first send, "
            f"CPU {c['cpu_s']:.2f} s"
            + (f", accepted at the call {c['accepted_at_call']:,}" if c.get("accepted_at_call") is not None else "")
            + (", close() returned before draining (queue full; stopped again until drained)"
               if c.get("close_returned_early") else "")
        )
    return "\n".join(f"- {part}" for part in parts)


def goals(results: list[tuple[Scenario, dict[str, Run]]], quick: bool = False) -> list[str]:
    lines = ["- (quick smoke run: the sizes are too small for these verdicts to mean anything)"] if quick else []
    drain50 = [(s, r) for s, r in results if s.kind == "drain" and s.latency_ms == 50]
    for _scenario, runs in drain50:
        ratio = _ratio(runs["ours"].drain_rate, runs["official"].drain_rate)
        verdict = "**met**" if ratio is not None and ratio >= 100 else "**not met**"
        lines.append(f"- ≥100× the official drain rate at 50 ms: {verdict} ({_fmt_ratio(ratio)}: "
                     f"{_fmt_int(runs['ours'].drain_rate)} vs {_fmt_int(runs['official'].drain_rate)} events/s).")
    misses, detail = [], []
    for scenario, runs in results:
        ratio = _ratio(runs["ours"].child["p50_us"], runs["official"].child["p50_us"])
        detail.append(f"{scenario.name} {_fmt_ratio(ratio)}")
        if ratio is None or ratio > 0.5:
            misses.append(scenario.name)
    verdict = "**met** in every scenario" if not misses else f"**not met** in: {', '.join(misses)}"
    lines.append(f"- caller p50 ≤ 0.5× the official: {verdict} ({'; '.join(detail)}).")
    bursts = [(s, r) for s, r in results if s.kind == "burst" and s.events >= 100_000]
    if not bursts:
        lines.append("- 0 lost on the 100k burst for ours: not measured in this run (use the default sizes).")
    for scenario, runs in bursts:
        lost = runs["ours"].lost
        verdict = "**met**" if lost == 0 else "**not met**"
        lines.append(f"- 0 lost on the {scenario.events:,}-call burst for ours: {verdict} "
                     f"({lost:,} lost; the official lost {runs['official'].lost:,} "
                     f"of {scenario.events:,}).")
    return lines


def observations(results: list[tuple[Scenario, dict[str, Run]]]) -> list[str]:
    lines = []
    early = [s.name for s, r in results if r["official"].child.get("close_returned_early")]
    if early:
        lines.append(
            f"- The official `close()` returned before draining in {len(early)} of {len(results)} scenarios "
            "(its queue was full, so its shutdown signal could not be enqueued): an application exiting right "
            "after `close()` would also lose the up to 1,000 events still queued. The numbers above credit it "
            "with them (see below)."
        )
    biggest_scenario, biggest = max(results, key=lambda sr: sr[0].events)
    ours = biggest["ours"].child
    growth = (ours["peak_rss_kib"] - ours["rss_before_kib"]) * 1024
    lines.append(
        f"- Ours, {biggest_scenario.name}: peak RSS grew by {growth / 2**20:.1f} MiB, about "
        f"{growth / biggest_scenario.events:,.0f} bytes per event, while the caller ran ahead of the background "
        "encoder (events are held as Python objects until encoded)."
    )
    for scenario, runs in results:
        run = runs["ours"]
        if scenario.kind != "drain" or not run.first_delivery:
            continue
        c = run.child
        lines.append(
            f"- Ours, {scenario.name}: the calls took {c['send_phase_s']:.2f} s, the first event reached the "
            f"collector {run.first_delivery - c['first_send']:.2f} s and the last "
            f"{run.last_delivery - c['first_send']:.2f} s after the first send, in {run.requests} request(s)."
        )
    return lines


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import version

    try:
        ours = version("optimizely-odp-ext")
    except Exception:
        from optimizely_odp_ext import __version__ as ours
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "python": platform.python_version(),
        "optimizely_sdk": version("optimizely-sdk"),
        "optimizely_odp_ext": ours,
        "platform": platform.platform(),
    }


def draw_chart(results: list[tuple[Scenario, dict[str, Run]]], path: Path, date: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    drains = sorted(((s, r) for s, r in results if s.kind == "drain"), key=lambda sr: sr[0].latency_ms)
    if not drains:
        return False
    latencies = [s.latency_ms for s, _ in drains]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for client, marker in (("official", "s"), ("ours", "o")):
        rates = [r[client].drain_rate for _, r in drains]
        ax.plot(latencies, rates, marker=marker, label=LABELS[client])
        for x, y in zip(latencies, rates):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_yscale("log")
    everything = [r[c].drain_rate for _, r in drains for c in CLIENTS if r[c].drain_rate > 0]
    if everything:
        ax.set_ylim(min(everything) / 2, max(everything) * 2.5)
    ax.set_xticks(latencies)
    ax.set_xlabel("latency added by the collector per request (ms)")
    ax.set_ylabel("drain rate (events/s, log scale)")
    ax.set_title(f"ODP drain rate, {drains[0][0].events:,} events from one thread ({date})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center right")
    fig.text(0.01, 0.01, "official: rate over the events it delivered (its 1,000-event queue drops the rest)",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def render(results: list[tuple[Scenario, dict[str, Run]]], info: dict[str, str], command: str, date: str,
           chart: str | None, elapsed: float, quick: bool = False) -> str:
    out = [
        "# Benchmark: official optimizely-sdk ODP events vs OdpOptimizely",
        "",
        f"- Date: {date}",
        f"- Machine: {info['cpus']} CPUs, {info['cpu_model']}; {info['platform']}",
        f"- Python {info['python']}, optimizely-sdk {info['optimizely_sdk']}, "
        f"optimizely-odp-ext {info['optimizely_odp_ext']}",
        f"- Command (from the repository root): `{command}`",
        f"- Whole run: {elapsed:.0f} s",
        "",
        "> These are whole-run numbers from one run on a shared, noisy 2-core machine: compare the two "
        "clients side by side (the ratios), not absolute numbers across runs or days.",
        "",
        "## Goals",
        "",
        *goals(results, quick),
        "",
    ]
    for scenario, runs in results:
        out += [f"## {scenario.name}", "", scenario_table(runs), "", detail_lines(runs), ""]
    if chart:
        out += ["## Drain rate against added latency", "", f"![drain rate vs latency]({chart})", "",
                "The official client's points are its rate over the events it delivered: its 1,000-event queue "
                "drops most of the events of these runs.", ""]
    out += ["## Observations (computed from this run)", "", *observations(results), ""]
    out += [
        "## How it is measured",
        "",
        "- The parent process runs a fresh `OdpCollector` (127.0.0.1, `record=False`) per client run, with "
        "`set_delay(latency)` on every answer (concurrent requests wait in parallel). Each client runs in its "
        "own subprocess, so its RSS and CPU are its own and the collector does not compete for its GIL.",
        "- Warm-up: the child sends 10 events (ours also `flush()`es); the parent waits for them at the "
        "collector and clears its counters before the timed run.",
        "- Timed run: one thread calls `send_odp_event(\"bench\", {\"fs_user_id\": ...}, data={...})` N times "
        "as fast as it returns; `time.perf_counter_ns()` around each call gives the caller p50/p99.",
        "- End: ours `flush(timeout)` then `close()`; the official `close()`, which drains its queue "
        "(batches of 10, one request at a time, a 1,000-event queue that drops when full). When that queue "
        "is full at close time, the official `close()` cannot enqueue its shutdown signal and returns at once "
        "with up to 1,000 events undelivered (a process exiting then loses them); the benchmark keeps the "
        "child alive and calls its event manager's `stop()` again until it drains, so the official is "
        "credited with everything it can deliver (as in BASELINE.md). Each child's ending is capped by "
        "`--timeout`.",
        "- delivered: events accepted (202) by the collector; lost = sent − delivered; "
        "drain rate = delivered / (last delivery at the collector − first send in the child), both `time.time()`.",
        "- peak RSS: `ru_maxrss` of the child process (growth: over its RSS just before the timed run); "
        "CPU: user+sys of the child from the first send to the end of close, per 10k delivered events.",
        "- requests / TCP connections: as seen by the collector during the timed run.",
        "",
    ]
    return "\n".join(out)


# ============================================================================ RESULTS.md sections
# RESULTS.md is shared: this script owns what lies between <!-- bench:start --> and <!-- bench:end -->,
# benchmarks/soak.py what lies between <!-- soak:start --> and <!-- soak:end -->. Each replaces only its own.

_ANY_SECTION_START = re.compile(r"<!-- [\w-]+:start -->")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section_text(text: str, name: str) -> str | None:
    """What lies between the markers of section ``name`` in ``text`` (stripped), None if absent."""
    start, end = _markers(name)
    i = text.find(start)
    j = text.find(end, i + len(start)) if i != -1 else -1
    return None if j == -1 else text[i + len(start):j].strip("\n")


def replace_section(text: str, name: str, content: str, first: bool = False) -> str:
    """``text`` with section ``name`` holding ``content``; everything outside its markers is kept.
    A missing section is added at the end (at the top with ``first``)."""
    start, end = _markers(name)
    body = content.strip("\n")
    block = f"{start}\n{body}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i != -1 else -1
    if j != -1:
        return text[:i] + block + text[j + len(end):]
    if not text.strip():
        return block + "\n"
    return block + "\n\n" + text.lstrip("\n") if first else text.rstrip("\n") + "\n\n" + block + "\n"


def update_results_section(path: Path, name: str, make: Callable[[str | None], str], first: bool = False) -> None:
    """Replace section ``name`` of ``path`` with ``make(its current content or None)``, under an
    exclusive lock on the file (two scripts may write at once). Without bench markers, the text
    before the first section was written whole by an older bench.py: the bench section replaces it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        if name == "bench" and section_text(text, name) is None:
            legacy = _ANY_SECTION_START.search(text)
            text = text[legacy.start():] if legacy else ""
        updated = replace_section(text, name, make(section_text(text, name)), first)
        handle.seek(0)
        handle.truncate()
        handle.write(updated)


# ============================================================================ main


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    scenarios = [Scenario(f"Drain: {args.events:,} events, {ms} ms added latency", ms, args.events, "drain")
                 for ms in args.latencies]
    scenarios.append(Scenario(f"Burst: {args.burst:,} calls, 0 ms", 0, args.burst, "burst"))
    if args.baseline_burst:
        scenarios.append(Scenario(f"Burst: {args.baseline_burst:,} calls, 0 ms (BASELINE.md)", 0,
                                  args.baseline_burst, "burst"))
    return scenarios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None, help="events per drain scenario (default 20000)")
    parser.add_argument("--latencies", type=int, nargs="+", default=[0, 20, 50],
                        help="added latencies in ms for the drain scenarios (default 0 20 50)")
    parser.add_argument("--burst", type=int, default=None, help="calls in the burst scenario (default 100000)")
    parser.add_argument("--baseline-burst", type=int, default=None,
                        help="calls in the BASELINE.md burst scenario, 0 to skip (default 5000)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each child may spend ending (flush/close) before it reports what it "
                             "has (default 60)")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds without a new delivery, after the child exits, that end a run")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 500 events, 5000-call burst, no BASELINE burst; prints only")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write RESULTS.md and the chart (default: yes, except with --quick)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--chart", type=Path, default=HERE / "drain_vs_latency.png")
    # child mode (internal)
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--child-events", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if not args.url or not args.url.startswith(("http://127.", "http://[::1]")):
            parser.error("--child needs a loopback --url")
        run_child(args.child, args.url, args.child_events, args.timeout)
        return 0

    if args.events is None:
        args.events = 500 if args.quick else 20_000
    if args.burst is None:
        args.burst = 5_000 if args.quick else 100_000
    if args.baseline_burst is None:
        args.baseline_burst = 0 if args.quick else 5_000
    write = (not args.quick) if args.write is None else args.write

    started = time.monotonic()
    date = datetime.date.today().isoformat()
    info = machine_info()
    command = "PYTHONPATH=. python benchmarks/bench.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    print(f"# {date}: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}, "
          f"optimizely-sdk {info['optimizely_sdk']}\n")

    results: list[tuple[Scenario, dict[str, Run]]] = []
    for scenario in build_scenarios(args):
        runs: dict[str, Run] = {}
        for client in CLIENTS:
            print(f"  running {scenario.name} / {LABELS[client]} ...", file=sys.stderr, flush=True)
            runs[client] = run_client(client, scenario, args.timeout, args.settle)
        results.append((scenario, runs))
        print(f"## {scenario.name}\n\n{scenario_table(runs)}\n\n{detail_lines(runs)}\n", flush=True)

    print("## Goals\n\n" + "\n".join(goals(results, args.quick)) + "\n")
    elapsed = time.monotonic() - started
    if write:
        chart = None
        if draw_chart(results, args.chart, date):
            chart = os.path.relpath(args.chart, args.results.parent)
            print(f"wrote {args.chart}", file=sys.stderr)
        content = render(results, info, command, date, chart, elapsed, args.quick)
        update_results_section(args.results, "bench", lambda _old: content, first=True)
        print(f"wrote {args.results}", file=sys.stderr)
    print(f"whole run: {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
