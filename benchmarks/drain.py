"""CPU per delivered event beside the floor, and the drain rate (issue 10, goals 1 and 2).

For each event size (~100 B, 2 KB, 20 KB of data), added latency (0 and 50 ms) and number of
sending threads (1 and 8), each client sends N events as fast as its calls return and drains
them (ours: ``flush()``; the official: ``close()``, stopped again until its queue is empty).
Ours runs twice, with the standard library's ``json`` (``OPTIMIZELY_ODP_ENCODER=json``) and with
the ``[fast]`` extra (ujson); the official client and the previous release ("ours-0.1.0", the
code before the delivery rewrite, extracted with ``git archive``) run beside them; the floor
(:mod:`floor`) is measured in each repetition, and again just before each run of ours. The
first repetition runs every combination; the others (``--repeat``) only the floor and the runs
the verdicts rest on (ours with stdlib json; ujson beside the previous release, small events at
0 ms). Each figure is the median of the repetitions that ran it.

- Ratios are paired: ours' CPU per event over the floor's measured just before it, the
  previous release's drain beside ours' of the same repetition; the figure is the median of
  those ratios. This machine's speed changes from minute to minute (one run's floors of small
  events measured 6.5 to 11.5 µs), and a ratio of two medians could set a floor measured while
  it was fast against ours measured while it was slow, or the other way round.

- CPU per delivered event: the client process's user+sys CPU from the first send until all
  was delivered, over the events the collector accepted. "callers" is the sending threads' own
  CPU (inside ``send_odp_event``, plus ~0.3 µs of harness per call), "background" the rest.
- Drain rate: delivered / (last delivery at the collector − first send).

Run alone (prints only)::

    python benchmarks/drain.py --repeat 1 --quick
"""

# ruff: noqa: RUF001, RUF002
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clients
import common
import floor

from optimizely_odp_ext.managers.batching import WAITING_OVERHEAD

EVENTS = {"small": 50_000, "2k": 20_000, "20k": 4_000}
LATENCIES = (0, 50)
THREADS = (1, 8)
OURS = ("ours-json", "ours-ujson")
GOAL_CPU_RATIO = 1.5
GOAL_DRAIN_RATIO = 3.0

Key = tuple[str, str, int, int]
"""(variant, size, latency ms, threads)"""


@dataclass
class DrainResults:
    runs: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    floors: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)

    def med(self, key: Key, name: str) -> float | None:
        return common.median([run.get(name) for run in self.runs.get(key, [])])

    def per_event(self, key: Key, name: str) -> float | None:
        """Median over repetitions of ``run[name]`` (seconds) per delivered event, in µs."""
        values = [run[name] / run["delivered"] * 1e6 for run in self.runs.get(key, []) if run.get("delivered")]
        return common.median(values)

    def to_floor(self, key: Key) -> float | None:
        """Median over repetitions of a run's CPU per event over the floor measured just before it
        (stdlib json); runs saved without one: the two medians' ratio."""
        runs = [run for run in self.runs.get(key, []) if run.get("floor")]
        paired = common.paired_ratio([run.get("cpu_us_per_event") for run in runs],
                                     [run["floor"]["cpu_us_per_event"] for run in runs])
        if paired is not None:
            return paired
        return common.ratio(self.med(key, "cpu_us_per_event"), self.floor(key[1]))

    def paired(self, key: Key, other: Key, name: str) -> float | None:
        """Median over repetitions of ``run[name]`` of ``key`` over that of ``other``, run beside it in
        the same repetition."""
        return common.paired_ratio([run.get(name) for run in self.runs.get(key, [])],
                                   [run.get(name) for run in self.runs.get(other, [])])

    def floor(self, size: str, encoder: str = "json") -> float | None:
        return common.median([f["cpu_us_per_event"] for f in self.floors.get((size, encoder), [])])

    def floor_part(self, size: str, part: str) -> float | None:
        return common.median([f[part] for f in self.floors.get((size, "json"), [])])


def plan(quick: bool, goals_only: bool = False) -> list[tuple[str, str, int, int]]:
    """Every client run of one repetition, in order (the floor of each size comes first). With
    ``goals_only``, only the runs the verdicts rest on: ours with stdlib json (goal 1), and ours
    with ujson beside the previous release, small events at 0 ms (goal 2)."""
    runs: list[tuple[str, str, int, int]] = []
    for size in EVENTS:
        for latency in LATENCIES:
            for threads in THREADS:
                runs += [(variant, size, latency, threads) for variant in OURS]
                if threads == 1:
                    runs.append(("official", size, latency, threads))
                    if size == "small":
                        runs.append(("ours-0.1.0", size, latency, threads))
    if quick:
        runs = [r for r in runs if r[1] != "2k" and (r[3] == 1 or r[1] == "small")]
    if goals_only:
        runs = [r for r in runs if r[0] == "ours-json"
                or (r[0] in ("ours-ujson", "ours-0.1.0") and r[1:] == ("small", 0, 1))]
    return runs


def run(repeat: int = 3, quick: bool = False, results: DrainResults | None = None) -> DrainResults:
    results = results or DrainResults()
    scale = 10 if quick else 1
    results.events = {size: max(1000, n // scale) for size, n in EVENTS.items()}
    for rep in range(repeat):
        runs = plan(quick, goals_only=rep > 0)
        for size in EVENTS:
            if not any(r[1] == size for r in runs):
                continue
            for encoder in ("json", "ujson"):
                common.progress(f"[drain {rep + 1}/{repeat}] floor {size} {encoder}")
                results.floors.setdefault((size, encoder), []).append(
                    floor.measure(size, results.events[size], encoder))
            for variant, _size, latency, threads in (r for r in runs if r[1] == size):
                before = None
                if variant in OURS:
                    common.progress(f"[drain {rep + 1}/{repeat}] floor {size} json, then:")
                    before = floor.measure(size, results.events[size], "json")
                    results.floors[(size, "json")].append(before)
                common.progress(f"[drain {rep + 1}/{repeat}] {variant} {size} {latency} ms {threads} thread(s)")
                result = clients.measure(variant, events=results.events[size], threads=threads, size=size,
                                         latency_ms=latency)
                result["floor"] = before
                results.runs.setdefault((variant, size, latency, threads), []).append(result)
    return results


# ============================================================================ verdicts


def cpu_goal(results: DrainResults) -> tuple[bool, str, float | None]:
    """Goal 1: ours (stdlib json) ≤ 1.5× the floor at 0 and 50 ms; (met, figure, worst ratio)."""
    ratios = []
    for (variant, size, latency, threads) in results.runs:
        if variant != "ours-json":
            continue
        r = results.to_floor((variant, size, latency, threads))
        if r is not None:
            ratios.append((r, size, latency, threads))
    if not ratios:
        return False, "not measured", None
    one = [r for r in ratios if r[3] == 1]
    worst = max(ratios)
    best = min(ratios)
    met = all(r[0] <= GOAL_CPU_RATIO for r in ratios)
    ordered = sorted(one, key=lambda x: (list(EVENTS).index(x[1]), x[2]))
    listed = ", ".join(f"{common.SIZE_LABELS[s]} {lat} ms {common.fmt_ratio(r)}" for r, s, lat, _ in ordered)
    summary = (f"1 thread: {listed}; worst of all {common.fmt_ratio(worst[0])} "
               f"({common.SIZE_LABELS[worst[1]]}, {worst[2]} ms, {worst[3]} threads), best {common.fmt_ratio(best[0])}")
    return met, summary, worst[0]


def drain_goal(results: DrainResults) -> tuple[bool, str, float | None]:
    """Goal 2: with the fast encoder, drain at 0 ms ≥ 3× the previous release's, same run."""
    fast = results.med(("ours-ujson", "small", 0, 1), "drain_rate")
    previous = results.med(("ours-0.1.0", "small", 0, 1), "drain_rate")
    r = results.paired(("ours-ujson", "small", 0, 1), ("ours-0.1.0", "small", 0, 1), "drain_rate")
    if r is None:
        return False, "not measured", None
    return r >= GOAL_DRAIN_RATIO, (f"{common.fmt_ratio(r)} (the median of each repetition's ratio; medians "
                                   f"{common.fmt_int(fast)} vs {common.fmt_int(previous)} events/s, small events, "
                                   "1 thread)"), r


# ============================================================================ report


def render(results: DrainResults) -> str:
    out = ["### CPU per delivered event beside the floor", "",
           "µs of client-process CPU per event the collector accepted (median of the repetitions); "
           "ratios: each run of ours over the floor (standard library's `json`) measured just before it, "
           "the median of those ratios (the floor column: the median of all the floor's runs). "
           "Goal: ours with stdlib json ≤ 1.5×.", ""]
    rows = []
    for size in EVENTS:
        for latency in LATENCIES:
            for threads in THREADS:
                key_json = ("ours-json", size, latency, threads)
                if key_json not in results.runs:
                    continue
                fl = results.floor(size)
                ours_json = results.med(key_json, "cpu_us_per_event")
                ours_fast = results.med(("ours-ujson", size, latency, threads), "cpu_us_per_event")
                official = results.med(("official", size, latency, threads), "cpu_us_per_event")
                previous = results.med(("ours-0.1.0", size, latency, threads), "cpu_us_per_event")
                r_json = results.to_floor(key_json)
                r_fast = results.to_floor(("ours-ujson", size, latency, threads))
                rows.append([
                    common.SIZE_LABELS[size], str(latency), str(threads),
                    f"**{common.fmt_ratio(r_json)}**", common.fmt_ratio(r_fast),
                    common.fmt_us(fl), common.fmt_us(results.floor(size, "ujson")),
                    common.fmt_us(ours_json), common.fmt_us(ours_fast),
                    common.fmt_us(previous) if previous else "",
                    common.fmt_us(official) if official else "",
                    "met" if r_json is not None and r_json <= GOAL_CPU_RATIO else "**not met**",
                ])
    out.append(common.table(["event data", "latency ms", "sender threads", "ours (json) / floor",
                             "ours (ujson) / floor", "floor (json) µs", "floor (ujson) µs", "ours (json) µs",
                             "ours (ujson) µs", "ours 0.1.0 µs", "official µs", "goal ≤ 1.5×"], rows))
    out += ["", "The official client's figure is its CPU over the events it delivered: its 1,000-event "
            "queue drops most events of these runs (it still spent caller CPU on them).", ""]

    out += ["### Where ours spends it (µs per delivered event)", ""]
    rows = []
    for size in EVENTS:
        for latency in LATENCIES:
            for threads in THREADS:
                for variant in OURS:
                    key = (variant, size, latency, threads)
                    if key not in results.runs:
                        continue
                    total = results.med(key, "cpu_us_per_event")
                    callers = results.per_event(key, "cpu_callers_s")
                    gc_ms = results.med(key, "gc_cpu_ms")
                    delivered = results.med(key, "delivered") or 0
                    gc_us = gc_ms * 1000 / delivered if gc_ms is not None and delivered else None
                    workers = common.median([run["background_threads"].get("odp-worker", 0)
                                             for run in results.runs[key]])
                    rows.append([common.SIZE_LABELS[size], str(latency), str(threads),
                                 "json" if variant == "ours-json" else "ujson", common.fmt_us(total),
                                 common.fmt_us(callers),
                                 common.fmt_us(None if total is None or callers is None else total - callers),
                                 common.fmt_us(gc_us), common.fmt_int(results.med(key, "requests")),
                                 common.fmt_int(workers)])
    out.append(common.table(["event data", "latency ms", "sender threads", "encoder", "total", "callers",
                             "background (workers, HTTP)", "of which GC passes (CPU)", "requests", "worker threads"],
                            rows))
    out += ["", "Floor parts (stdlib json, µs per event): " + "; ".join(
        f"{common.SIZE_LABELS[s]}: encode {common.fmt_us(results.floor_part(s, 'encode_us'))}, join "
        f"{common.fmt_us(results.floor_part(s, 'join_us'))}, "
        f"1/500 of a POST {common.fmt_us(results.floor_part(s, 'post_us'))}"
        for s in EVENTS if (s, "json") in results.floors) + ".", ""]

    out += ["### Drain rate", "",
            "Events per second from the first send to the last delivery, small events, 1 sender thread "
            "(goal at 0 ms: ours with the fast encoder ≥ 3× the previous release in the same run).", ""]
    rows = []
    for latency in LATENCIES:
        row = [str(latency)]
        for variant in ("official", "ours-0.1.0", "ours-json", "ours-ujson"):
            row.append(common.fmt_int(results.med((variant, "small", latency, 1), "drain_rate")))
        for variant, beside in (("ours-ujson", "ours-0.1.0"), ("ours-json", "ours-0.1.0"), ("ours-ujson", "official")):
            row.append(common.fmt_ratio(results.paired((variant, "small", latency, 1), (beside, "small", latency, 1),
                                                       "drain_rate")))
        rows.append(row)
    out.append(common.table(["latency ms", "official", "ours 0.1.0", "ours (json)", "ours (ujson)",
                             "ujson / 0.1.0", "json / 0.1.0", "ujson / official"], rows))
    ours = [(k, r) for k, runs in results.runs.items() for r in runs if k[0] != "official"]
    lost = [(k, r) for k, r in ours if r["delivered"] != r.get("accepted", r["events"])]
    refused = [(k, r) for k, r in ours if r.get("accepted", r["events"]) != r["events"]]
    out += ["", f"- Events: {', '.join(f'{common.SIZE_LABELS[s]} {n:,}' for s, n in results.events.items())} "
            "per run; " + ("ours delivered every event it accepted, in every run" if not lost else
                           f"**ours lost accepted events in {len(lost)} run(s)**: " + "; ".join(
                               f"{'/'.join(map(str, k))}: {r['delivered']:,} delivered of {r['accepted']:,} "
                               "accepted" for k, r in lost[:5]))]
    if refused:
        out.append(
            f"- In {len(refused)} run(s) a burst filled ours' `max_queue_bytes` (default 128 MiB, which counts "
            f"each waiting event at its JSON size + {WAITING_OVERHEAD} B): "
            "the calls beyond it returned "
            "`queueFull` to the caller, as documented, and figures are per delivered event. Largest: " + "; ".join(
                f"{'/'.join(map(str, k))}: {r['events'] - r['accepted']:,} of {r['events']:,} refused"
                for k, r in sorted({k: r for k, r in sorted(refused, key=lambda kr: -kr[1]["accepted"])}.items(),
                                   key=lambda kr: kr[1]["accepted"] - kr[1]["events"])[:3]))
    return "\n".join(out) + "\n"


def draw_cpu_chart(results: DrainResults, path: Path, date: str) -> bool:
    """Bars of CPU per delivered event (0 ms, 1 thread) beside the floor, per event size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
        return False
    sizes = [s for s in EVENTS if ("ours-json", s, 0, 1) in results.runs]
    if not sizes:
        return False
    series = [
        ("floor, stdlib json", lambda s: results.floor(s), "#555555"),
        ("1.5 × floor (goal)", lambda s: (results.floor(s) or 0) * GOAL_CPU_RATIO, "#bbbbbb"),
        ("ours, stdlib json", lambda s: results.med(("ours-json", s, 0, 1), "cpu_us_per_event"), "#1f77b4"),
        ("ours, ujson", lambda s: results.med(("ours-ujson", s, 0, 1), "cpu_us_per_event"), "#2ca02c"),
        ("floor, ujson", lambda s: results.floor(s, "ujson"), "#98df8a"),
        ("ours 0.1.0", lambda s: results.med(("ours-0.1.0", s, 0, 1), "cpu_us_per_event"), "#ff7f0e"),
    ]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 4.5), dpi=110)
    if len(sizes) == 1:
        axes = [axes]
    for ax, size in zip(axes, sizes):
        labels, values, colors = [], [], []
        for label, get, color in series:
            value = get(size)
            if value:
                labels.append(label)
                values.append(value)
                colors.append(color)
        bars = ax.bar(range(len(values)), values, color=colors)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.1f}" if value < 100 else f"{value:.0f}",
                        (bar.get_x() + bar.get_width() / 2, value), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=8)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{common.SIZE_LABELS[size]} of data", fontsize=10)
        ax.set_ylabel("CPU µs per delivered event")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"CPU per delivered event vs the floor, 0 ms, 1 sender thread ({date})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def draw_drain_chart(results: DrainResults, path: Path, date: str) -> bool:
    """Drain rate against added latency (small events, 1 sender thread), log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    plotted = []
    for variant, marker in (("official", "s"), ("ours-0.1.0", "^"), ("ours-json", "o"), ("ours-ujson", "D")):
        points = [(lat, results.med((variant, "small", lat, 1), "drain_rate")) for lat in LATENCIES]
        points = [(x, y) for x, y in points if y]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker=marker, label=common.LABELS[variant])
        plotted += ys
        for x, y in points:
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if not plotted:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    ax.set_ylim(min(plotted) / 2, max(plotted) * 3)
    ax.set_xticks(list(LATENCIES))
    ax.set_xlabel("latency added by the collector per request (ms)")
    ax.set_ylabel("drain rate (events/s, log scale)")
    ax.set_title(f"ODP drain rate, small events from one thread ({date})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.text(0.01, 0.01, "official: rate over the events it delivered (its 1,000-event queue drops the rest)",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the events, fewer combinations")
    args = parser.parse_args()
    results = run(args.repeat, args.quick)
    print(render(results))
    for line in (cpu_goal(results)[1], drain_goal(results)[1]):
        print("-", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
