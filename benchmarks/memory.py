"""RSS while the queue is at its caps, during an outage, and after the backlog drains (issue 10, goal 3).

One client process per run. After the warm-up the collector answers 503; the child sends events
(~100 B, 2 KB or 20 KB of data) as fast as it can until the queue refuses 2,000 calls in a row
(it is at a cap), waits until the background has encoded what it holds (``queued_bytes``
steady), samples its RSS for a second, and reports. The collector then answers 202 again; the
child ``flush()``es, collects garbage and reports its RSS after the drain (and after
``malloc_trim(0)``, which hands glibc's free memory back to the system: the difference is memory
the allocator keeps, not memory the library holds).

- **bytes cap**: ``max_queue_bytes`` = 32 MiB (``max_queue_events`` out of reach);
- **events cap**: ``max_queue_events`` = 50,000 / 10,000 / 1,000 events (``max_queue_bytes`` at its
  default 128 MiB, out of reach).

RSS growth = the highest RSS sampled at the cap − RSS just before the first timed call (the
harness's own data was built before). Goal: growth ≤ 1.25× ``max_queue_bytes`` at the bytes cap,
and, at the events cap, ≤ 1.25× what ``queued_bytes`` says it holds (the same accounting). The
official client (a 1,000-event queue, its own cap, 5,000 calls) and the previous release (at the
bytes cap) run beside ours.

Run alone (prints only)::

    python benchmarks/memory.py
"""

# ruff: noqa: RUF001, RUF002
from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import clients
import common

BYTES_CAP = 32 * common.MiB
EVENTS_CAP = {"small": 50_000, "2k": 10_000, "20k": 1_000}
OFFICIAL_CALLS = 5_000
REFUSED_IN_A_ROW = 2_000
GOAL_RATIO = 1.25


def child(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["client"]
    client, send = clients.build_client(kind, spec["url"], spec.get("settings") or {})
    pool = common.data_pool(spec["size"], 1000)
    for i in range(10):
        send("bench_warmup", {"fs_user_id": f"warmup-{i}"}, data={"n": i})
    if kind != "official":
        client.flush(10.0)
    gc.collect()
    gc.freeze()
    common.ready_and_wait()

    samples: list[int] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.02):
            samples.append(common.rss_kib())

    rss_before = common.rss_kib()
    threading.Thread(target=sample, daemon=True).start()
    calls = accepted = in_a_row = 0
    limit = spec.get("calls") or 10_000_000
    started = time.monotonic()
    while calls < limit and in_a_row < REFUSED_IN_A_ROW and time.monotonic() - started < 120:
        result = send("bench", {"fs_user_id": f"user-{calls}"}, data=pool[calls % len(pool)])
        calls += 1
        if result is None or result:
            accepted += 1
            in_a_row = 0
        else:
            in_a_row += 1
    fill_s = time.monotonic() - started

    def held() -> tuple[int, int]:
        if kind == "official":
            return client.odp_manager.event_manager.event_queue.qsize(), 0
        stats = client.odp_stats()
        return stats.get("queued", 0) + stats.get("in_flight", 0), stats.get("queued_bytes", 0)

    steady, last, deadline = 0, None, time.monotonic() + 20
    while steady < 5 and time.monotonic() < deadline:  # until what it holds is encoded (bytes steady)
        time.sleep(0.1)
        now = held()
        steady = steady + 1 if now == last else 0
        last = now
    at_cap_from = len(samples)
    time.sleep(1.0)
    at_cap = samples[at_cap_from:] or [common.rss_kib()]
    events_held, bytes_counted = held()
    common.say("ATCAP", {"calls": calls})
    if sys.stdin.readline().strip() != "DRAIN":
        import os

        os._exit(2)
    drained = None
    if kind == "official":
        common.close_official(client)
    else:
        drained = client.flush(120.0)
    stop_sampling.set()
    gc.collect()
    time.sleep(0.2)
    rss_drained = common.rss_kib()
    trimmed = rss_drained
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = common.rss_kib()
    except OSError:
        pass
    stats = client.odp_stats() if kind != "official" else None
    return {
        "calls": calls, "accepted": accepted, "fill_s": fill_s, "events_held": events_held,
        "bytes_counted": bytes_counted, "rss_before_kib": rss_before, "rss_at_cap_kib": max(at_cap),
        "rss_peak_kib": max(samples) if samples else rss_before, "rss_drained_kib": rss_drained,
        "rss_trimmed_kib": trimmed, "drained": drained, "stats": stats,
    }


@dataclass
class MemoryResults:
    runs: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """(cap, variant, size) -> the child's result plus what the collector got."""


def measure(variant: str, size: str, cap: str) -> dict[str, Any]:
    kind, env, previous = clients.VARIANTS[variant]
    package = common.previous_package() if previous else None
    settings: dict[str, Any] = {}
    calls = None
    if kind == "official":
        calls = OFFICIAL_CALLS
    elif cap == "bytes":
        settings = {"max_queue_bytes": BYTES_CAP, "max_queue_events": 10_000_000}
    else:
        settings = {"max_queue_events": EVENTS_CAP[size]}
    with common.collector(0.0) as (server, deliveries):
        child = common.ChildProcess("memory.py", {"client": kind, "url": server.url, "size": size,
                                                  "settings": settings, "calls": calls}, env=env, package=package)
        try:
            child.expect("READY", 120)
            server.wait_for_events(10, 30.0)
            server.respond_with(503)
            deliveries.reset()
            child.say("GO")
            child.expect("ATCAP", 300)
            server.reset_faults()
            child.say("DRAIN")
            result = child.expect_json("RESULT", 300)
        finally:
            child.cleanup()
        result.update(variant=variant, size=size, cap=cap, settings=settings, delivered=deliveries.count)
    kib = 1024
    result["growth"] = (result["rss_at_cap_kib"] - result["rss_before_kib"]) * kib
    result["limit"] = settings.get("max_queue_bytes") if cap == "bytes" and kind != "official" else None
    return result


def run(quick: bool = False, results: MemoryResults | None = None) -> MemoryResults:
    results = results or MemoryResults()
    sizes = ("small", "20k") if quick else tuple(EVENTS_CAP)
    for size in sizes:
        for cap, variant in (("bytes", "ours-json"), ("bytes", "ours-ujson"), ("events", "ours-json"),
                             ("bytes", "ours-0.1.0"), ("own", "official")):
            if quick and variant in ("ours-ujson", "ours-0.1.0"):
                continue
            common.progress(f"[memory] {variant} {size} at the {cap} cap")
            results.runs[(cap, variant, size)] = measure(variant, size, cap)
    return results


def ratio_of(run: dict[str, Any]) -> float | None:
    """Growth over what bounds it: max_queue_bytes at the bytes cap, queued_bytes at the events cap."""
    if run["cap"] == "bytes":
        return common.ratio(run["growth"], run["settings"]["max_queue_bytes"])
    if run["cap"] == "events":
        return common.ratio(run["growth"], run["bytes_counted"])
    return None


def goal(results: MemoryResults) -> tuple[bool, str]:
    parts, met = [], True
    for (cap, variant, size), run in results.runs.items():
        if not variant.startswith("ours-") or variant == "ours-0.1.0":
            continue
        r = ratio_of(run)
        if r is None:
            continue
        met = met and r <= GOAL_RATIO
        parts.append(f"{common.SIZE_LABELS[size]} {cap} cap {variant.split('-')[1]} {common.fmt_ratio(r)}")
    return met, "; ".join(parts)


def render(results: MemoryResults) -> str:
    out = ["### RSS at the caps during an outage, and after the drain", "",
           "RSS growth over the client process's RSS before the first call, with the collector answering 503; "
           "then RSS after the backlog was delivered. Goal: growth ≤ 1.25× the bound (`max_queue_bytes` at the "
           "bytes cap; what `queued_bytes` counts at the events cap).", ""]
    rows = []
    for (cap, variant, size), run in results.runs.items():
        r = ratio_of(run)
        mib = common.MiB
        kib = 1024
        per_event = run["growth"] / run["events_held"] if run["events_held"] else None
        rows.append([
            common.SIZE_LABELS[size], {"bytes": "bytes (32 MiB)", "events": f"events ({EVENTS_CAP[size]:,})",
                                       "own": "its 1,000-event queue"}[cap],
            common.LABELS[variant], f"**{common.fmt_ratio(r)}**" if r is not None else "",
            common.fmt_int(run["events_held"]), common.fmt_mib(run["bytes_counted"] / mib) if run["bytes_counted"]
            else "", common.fmt_mib(run["growth"] / mib), common.fmt_int(per_event),
            common.fmt_mib((run["rss_peak_kib"] - run["rss_before_kib"]) * kib / mib),
            common.fmt_mib((run["rss_drained_kib"] - run["rss_before_kib"]) * kib / mib),
            common.fmt_mib((run["rss_trimmed_kib"] - run["rss_before_kib"]) * kib / mib),
            f"{run['delivered']:,} of {run['accepted']:,}",
            "" if r is None or variant == "ours-0.1.0" else ("met" if r <= GOAL_RATIO else "**not met**"),
        ])
    out.append(common.table(["event data", "cap", "client", "growth / bound", "events held", "queued_bytes MiB",
                             "RSS growth at the cap MiB", "bytes per event held", "peak growth MiB",
                             "after the drain MiB", "after malloc_trim MiB", "delivered", "goal ≤ 1.25×"], rows))
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = run(args.quick)
    print(render(results))
    print("-", goal(results)[1])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        common.child_main(child)
    else:
        sys.exit(main())
