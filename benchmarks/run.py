"""Issue 10's benchmark set in one command: each goal beside its figure, ours beside the official
optimizely-sdk (and the previous release) in the same run; writes RESULTS.md and the charts.

Run by hand (not in CI), from the repository root, in a venv with ``pip install -e '.[dev,bench]'``
(``dev`` brings ujson, the ``[fast]`` extra, and ``bench`` matplotlib)::

    python benchmarks/run.py                 # the full set (~15 min on 2 busy cores), writes RESULTS.md
    python benchmarks/run.py --quick         # a smoke run (~3 min), prints only
    python benchmarks/run.py --only drain burst --no-write

The scenarios, each in its own file (each runs alone too, printing only):

- ``floor.py``: the physical floor (encode, join, keep-alive POST) measured like BASELINE.md;
- ``drain.py``: CPU per delivered event beside the floor, and the drain rate;
- ``burst.py``: the caller's p99.9 and max during a drain, a burst and refusals;
- ``memory.py``: RSS at the queue's caps during an outage, and after the drain;
- ``import_time.py``: import + construction, whole process;

and the long runs, run on their own (they write their own part of RESULTS.md with ``--write``):
``outage.py``, ``spool_restart.py``, ``soak.py``. Nothing leaves 127.0.0.1.
"""

# ruff: noqa: RUF001
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import burst
import common
import drain
import import_time
import memory

SCENARIOS = ("drain", "burst", "memory", "import")
OTHERS = ("redis_fleet.py", "import_rate.py", "redis_store.py")
"""Benchmarks of other parts, run on their own (their own commands and sections)."""


def goals_table(drain_results: drain.DrainResults | None, tail: burst.TailResults | None,
                mem: memory.MemoryResults | None, imports: import_time.ImportResults | None) -> str:
    rows: list[list[str]] = []

    def verdict(met: bool | None) -> str:
        return "not run" if met is None else "**met**" if met else "**not met**"

    if drain_results is not None:
        met, figure, _ = drain.cpu_goal(drain_results)
        rows.append(["1. CPU per delivered event ≤ 1.5× the floor (stdlib json), at 0 and 50 ms", figure,
                     verdict(met)])
        met, figure, _ = drain.drain_goal(drain_results)
        rows.append(["2. with the fast encoder, drain at 0 ms ≥ 3× the previous release (same run)", figure,
                     verdict(met)])
    if mem is not None:
        met, figure = memory.goal(mem)
        rows.append(["3. RSS growth at either cap ≤ 1.25× `max_queue_bytes` (events cap: ≤ 1.25× what "
                     "`queued_bytes` counts); memory back after the drain", figure + " (after the drain: see below)",
                     verdict(met)])
    if tail is not None:
        p_ok, max_ok, figure = burst.goal(tail)
        rows.append(["4. caller p99.9 ≤ the official's and max ≤ 5 ms, drain/burst/refusal, 1 and 8 threads",
                     figure, f"p99.9 {verdict(p_ok)}, max {verdict(max_ok)}"])
    if imports is not None:
        met, figure, _ = import_time.goal(imports)
        rows.append(["5. import + construction ≤ 1.05× the official's (whole process, median)", figure,
                     verdict(met)])
    return common.table(["goal (issue 10)", "figure (this run)", "verdict"], rows)


def render(parts: dict[str, Any], info: dict[str, str], command: str, date: str, elapsed: float,
           loads: tuple[str, str], charts: dict[str, str], repeat: int, quick: bool) -> str:
    d, t, m, i = (parts.get(name) for name in SCENARIOS)
    out = [
        "# Benchmark: issue 10 goals, ours beside the official optimizely-sdk",
        "",
        f"- Date: {date}",
        f"- Machine: {info['cpus']} CPUs, {info['cpu_model']}; {info['platform']}",
        f"- Python {info['python']}, optimizely-sdk {info['optimizely_sdk']}, optimizely-odp-ext "
        f"{info['optimizely_odp_ext']} ({common.git_state()}), fast encoder: {info['fast']}; previous release: "
        f"`{common.PREVIOUS_COMMIT}` (the code before the delivery rewrite)",
        f"- Command (from the repository root): `{command}`",
        f"- Load average (1/5/15 min) at the start: {loads[0]}; at the end: {loads[1]}. The machine is shared "
        "with other work: compare the clients side by side (the ratios of one run), not absolute figures "
        "across runs or days.",
        f"- Repetitions: {repeat} of the runs the verdicts rest on (median reported; see each table); whole run "
        f"{elapsed / 60:.1f} min"
        + (" — **quick smoke run: the sizes are too small for the verdicts to mean anything**" if quick else ""),
        "",
        "## Goals",
        "",
        goals_table(d, t, m, i),
        "",
    ]
    if d is not None:
        out += [drain.render(d)]
        if charts.get("cpu"):
            out += [f"![CPU per event vs the floor]({charts['cpu']})", ""]
        if charts.get("drain"):
            out += [f"![drain rate vs latency]({charts['drain']})", ""]
    for part, renderer in ((t, burst.render), (m, memory.render), (i, import_time.render)):
        if part is not None:
            out += [renderer(part)]
    out += [
        "### How it is measured",
        "",
        "- Every client runs in its own process (`benchmarks/clients.py`, `floor.py`, `memory.py`), so its CPU "
        "and RSS are its own. The collector is the project's `OdpCollector` (127.0.0.1, TCP_NODELAY on its "
        "keep-alive connections, `record=False`), a fresh one per run, in the parent process; `set_delay` adds "
        "the latency to every answer (concurrent requests wait in parallel).",
        "- Events: `send_odp_event(\"bench\", {\"fs_user_id\": \"user-<i>\"}, data=...)`, data of ~100 B (6 "
        "fields), 2 KB or 20 KB of JSON (strings, integers, floats, booleans), from a pool of distinct dicts "
        "built before the timed region (and `gc.freeze()`d, so they are not the client's garbage to scan).",
        "- Ours: default settings except where a scenario says; stdlib json is `OPTIMIZELY_ODP_ENCODER=json`, "
        "ujson the `[fast]` extra installed. The previous release is `git archive "
        f"{common.PREVIOUS_COMMIT} optimizely_odp_ext`, first on `sys.path`.",
        "- The official: `close()` drains its queue; when the queue is full at close time it returns at once "
        "with up to 1,000 events left (a process exiting then loses them): the benchmark calls its event "
        "manager's `stop()` again until it drained, so it is credited with all it can deliver.",
        "- The floor, the goals' reference: see `floor.py` (as BASELINE.md: `json.dumps` of each event, "
        "joined into 500-event bodies, POSTed one at a time over a keep-alive `requests.Session`, CPU of the "
        "sending thread).",
        "",
        "Other benchmarks, run on their own: the long runs below (`outage.py`, `spool_restart.py`, `soak.py`)"
        + "".join(f", `{name}`" for name in OTHERS if (common.HERE / name).exists()) + ".",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a tenth of the events, 1 repetition")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of drain and burst (default 3)")
    parser.add_argument("--import-runs", type=int, default=None,
                        help=f"runs of each import variant (default {import_time.ROUNDS})")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write RESULTS.md and the charts (default: yes for a full run of every scenario)")
    parser.add_argument("--results", type=Path, default=common.HERE / "RESULTS.md")
    parser.add_argument("--save", type=Path, default=Path(tempfile.gettempdir()) / "odp-bench-last-run.json",
                        help="where to keep every run's raw figures (JSON)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    import_runs = args.import_runs or (5 if args.quick else import_time.ROUNDS)
    write = args.write if args.write is not None else (not args.quick and set(args.only) == set(SCENARIOS))

    started = time.monotonic()
    date = datetime.date.today().isoformat()
    info = common.machine_info()
    load_start = common.load_average()
    command = "python benchmarks/run.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    print(f"# {date}: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}, load {load_start}",
          file=sys.stderr, flush=True)
    if common.previous_package() is None:
        print("the previous release's code could not be extracted (git archive): run from a git checkout",
              file=sys.stderr)
        return 2

    parts: dict[str, Any] = {}
    if "drain" in args.only:
        parts["drain"] = drain.run(repeat, args.quick)
    if "burst" in args.only:
        parts["burst"] = burst.run(repeat, args.quick)
    if "memory" in args.only:
        parts["memory"] = memory.run(args.quick)
    if "import" in args.only:
        parts["import"] = import_time.run(import_runs)
    elapsed = time.monotonic() - started
    loads = (load_start, common.load_average())

    try:
        args.save.write_text(json.dumps({name: _raw(part) for name, part in parts.items()}, default=str))
        print(f"raw figures: {args.save}", file=sys.stderr)
    except OSError as error:
        print(f"could not save the raw figures: {error}", file=sys.stderr)

    charts: dict[str, str] = {}
    if write and "drain" in parts:
        for name, draw, file in (("cpu", drain.draw_cpu_chart, "cpu_per_event.png"),
                                 ("drain", drain.draw_drain_chart, "drain_vs_latency.png")):
            path = common.HERE / file
            if draw(parts["drain"], path, date):
                charts[name] = os.path.relpath(path, args.results.parent)
    text = render(parts, info, command, date, elapsed, loads, charts, repeat, args.quick)
    print(text)
    if write:
        common.update_results_section(args.results, "bench", lambda _old: text, first=True)
        print(f"wrote {args.results}", file=sys.stderr)
    print(f"whole run: {elapsed / 60:.1f} min", file=sys.stderr)
    return 0


def _raw(part: Any) -> Any:
    """A scenario's results as JSON-able data (tuple keys joined with '/')."""
    out = {}
    for name, value in vars(part).items():
        out[name] = {"/".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in value.items()} \
            if isinstance(value, dict) else value
    return out


if __name__ == "__main__":
    sys.exit(main())
