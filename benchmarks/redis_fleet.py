"""The fleet on Redis, by hand (not in CI): what the caller pays, how long an event lives only in
memory, how fast a fleet drains, and what a waiting event costs Redis. Prints one markdown
section on stdout and writes nothing else.

Run from the repository root (needs ``redis-server`` and ``pip install -e '.[redis]'``)::

    PYTHONPATH=. python benchmarks/redis_fleet.py            # ~1 minute
    PYTHONPATH=. python benchmarks/redis_fleet.py --quick    # ~30 s, smaller counts

It starts its own ``redis-server`` on 127.0.0.1 (AOF on, ``everysec``, as the tests do) and a
loopback collector in this process; every client runs in a subprocess of its own (this file
with ``--child``), so the collector and the poller below do not share its GIL.

1. **Caller cost at a paced rate**: one thread calls ``send_odp_event`` ``--rate`` times a
   second (5,000 by default; the issue's budget is p99 <= 1 ms with the Redis spool), timing
   each call; p50, p99, p99.9 and max for ``OdpOptimizely`` with ``spool_url``, without a
   spool, and the official SDK's ``send_odp_event`` (optimizely-sdk 5.x) for reference.
2. **The durability window**: for the ``spool_url`` run, the time from each ``send_odp_event``
   to the return of the append that stored it (the child wraps its manager's spool link to
   note when each append returned; appends are in order, so event i is in Redis once more
   than i events were appended).
3. **Drain rate**: ``--backlog`` events appended to the stream, then 1, 2 and 4 member processes
   (``BatchEventManager(spool_url=…)``, no client: relays) deliver them to the collector, which
   answers after 50 ms; events/s between the first and the last delivery, and each member's share.
4. **Redis memory per waiting event**: ``used_memory`` growth per event appended (unread), then
   after one consumer claimed them all (pending).
"""

# ruff: noqa: RUF001  (the report uses the multiplication sign on purpose)
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API_KEY = "bench-public-key"
STREAM = "optimizely-odp:events"
WARMUP = 200
MODES = ("fleet", "producer", "memory", "official")


# ============================================================================ children


def child_caller(mode: str, collector_url: str, redis_url: str, events: int, rate: float) -> None:
    """Paced sends from one thread; one JSON line: sorted durations (ns) and send times (wall)."""
    from optimizely.optimizely import Optimizely

    from optimizely_odp_ext import BatchEventManager, OdpOptimizely
    from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile

    datafile = json.dumps(sample_datafile(host=collector_url, api_key=API_KEY))
    options: dict[str, Any] = {"datafile": datafile, "event_dispatcher": RecordingEventDispatcher()}
    if mode == "official":
        client: Any = Optimizely(**options)
    elif mode == "memory":
        client = OdpOptimizely(**options)
    else:
        manager = BatchEventManager(spool_url=redis_url, deliver=mode == "fleet")
        client = OdpOptimizely(**options, odp_event_manager=manager)
    appended: list[tuple[float, int]] = []
    if mode in ("fleet", "producer"):
        watch_appends(client, appended)
    send = client.send_odp_event
    for i in range(WARMUP):
        send("warmup", {"fs_user_id": f"warmup-{i}"})
    if mode != "official":
        client.flush(10)
    time.sleep(0.5)
    print("READY", flush=True)
    sys.stdin.readline()

    durations = [0] * events
    sent_at = [0.0] * events
    late = 0
    interval = 1.0 / rate
    clock, wall, sleep = time.perf_counter_ns, time.time, time.sleep
    cpu_before = time.process_time()
    start = time.perf_counter()
    for i in range(events):
        ahead = start + i * interval - time.perf_counter()
        if ahead > 0:
            sleep(ahead)
        elif ahead < -0.01:
            late += 1
        sent_at[i] = wall()
        t0 = clock()
        send("bench", {"fs_user_id": f"user-{i}"}, data={"n": i, "plan": "pro"})
        durations[i] = clock() - t0
    elapsed = time.perf_counter() - start
    if mode == "official":
        client.close()
    else:
        client.flush(30)
        client.close(10)
    cpu = time.process_time() - cpu_before
    done = [(at, count - WARMUP) for at, count in appended if count > WARMUP]
    print(json.dumps({"durations": sorted(durations), "window_ms": durability_window(sent_at, done) if done else [],
                      "late": late, "rate": events / elapsed, "cpu_us_per_event": cpu / events * 1e6}), flush=True)


def watch_appends(client: Any, appended: list[tuple[float, int]]) -> None:
    """Record, after each append the manager's writer makes, when it returned and how many events
    were appended so far (appends are in order): event i is in Redis at the first record > i."""
    link = client.odp_event_manager._link
    append = link.append
    total = [0]

    def timed(records: Any) -> Any:
        ids = append(records)
        if ids is not None:
            total[0] += len(ids)
            appended.append((time.time(), total[0]))
        return ids

    link.append = timed


def child_member(redis_url: str) -> None:
    """A relay: delivers from the stream until told STOP; one JSON line with its counters."""
    from optimizely_odp_ext import BatchEventManager
    from optimizely_odp_ext.managers.lifecycle import NullLogger

    manager = BatchEventManager(spool_url=redis_url)
    print("READY", flush=True)
    sys.stdin.readline()  # GO
    manager.start(logger=NullLogger(), notification_center=None, integration=None)
    sys.stdin.readline()  # STOP
    manager.close(10)
    stats = manager.stats()
    print(json.dumps({key: stats[key] for key in ("delivered", "claimed", "released", "lost_claims")}), flush=True)


# ============================================================================ parent


class Child:
    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env = {k: v for k, v in env.items() if not k.startswith("OPTIMIZELY_ODP_")}
        self.process = subprocess.Popen([sys.executable, __file__, "--child", *args], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, timeout: float = 120) -> str:
        return self.lines.get(timeout=timeout)

    def tell(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def end(self) -> None:
        self.process.wait(60)


def percentile(ordered: list[Any], fraction: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]) if ordered else 0.0


def caller_cost(redis_url: str, events: int, rate: float) -> dict[str, dict[str, Any]]:
    import redis

    from optimizely_odp_ext.testing import OdpCollector

    results: dict[str, dict[str, Any]] = {}
    admin = redis.Redis.from_url(redis_url)
    for mode in MODES:
        admin.delete(STREAM)
        with OdpCollector(api_key=API_KEY, record=False) as collector:
            child = Child("caller", mode, collector.url, redis_url, str(events), str(rate))
            assert child.expect() == "READY"
            child.tell("GO")
            report = json.loads(child.expect(events / rate + 120))
            child.end()
        ns = report["durations"]
        result = {"p50": percentile(ns, 0.5) / 1e3, "p99": percentile(ns, 0.99) / 1e3,
                  "p999": percentile(ns, 0.999) / 1e3, "max": ns[-1] / 1e3, "rate": report["rate"],
                  "late": report["late"], "cpu": report["cpu_us_per_event"]}
        if mode in ("fleet", "producer"):
            result["window_ms"] = report["window_ms"]
        results[mode] = result
    return results


def durability_window(sent_at: list[float], polls: list[tuple[float, int]]) -> list[float]:
    """For each event, the time from its send to the first record ``(when, appended so far)`` that
    has it in Redis (ms), sorted."""
    windows = []
    index = 0
    for i, sent in enumerate(sent_at):
        while index < len(polls) and polls[index][1] <= i:
            index += 1
        if index == len(polls):
            break
        windows.append(max(0.0, polls[index][0] - sent) * 1000)
    return sorted(windows)


def backlog_records(collector_url: str, count: int) -> list[Any]:
    from optimizely_odp_ext.event import OdpEvent
    from optimizely_odp_ext.spool import SpoolRecord

    now = time.time()
    return [SpoolRecord(collector_url, API_KEY, OdpEvent("fullstack", "bench", {"fs_user_id": f"user-{i}"},
                                                         {"n": i, "plan": "pro"}).to_json(), now)
            for i in range(count)]


def drain(redis_url: str, backlog: int, members: int, latency: float) -> dict[str, Any]:
    import redis

    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool
    from optimizely_odp_ext.testing import OdpCollector

    admin = redis.Redis.from_url(redis_url)
    admin.delete(STREAM)
    times: list[float] = []
    with OdpCollector(api_key=API_KEY, record=False) as collector:
        collector.on_event = lambda _event: times.append(time.monotonic())
        collector.set_delay(latency)
        spool = RedisStreamSpool(redis_url)
        records = backlog_records(collector.url, backlog)
        for start in range(0, backlog, 1000):
            spool.append(records[start:start + 1000])
        spool.close()
        children = [Child("member", redis_url) for _ in range(members)]
        for child in children:
            assert child.expect() == "READY"
        for child in children:
            child.tell("GO")
        deadline = time.monotonic() + 300
        while collector.event_count() < backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in children:
            child.tell("STOP")
        shares = [json.loads(child.expect())["delivered"] for child in children]
        for child in children:
            child.end()
        delivered = collector.event_count()
    ordered = sorted(times)
    span = ordered[-1] - ordered[0] if len(ordered) > 1 else float("nan")
    return {"members": members, "delivered": delivered, "rate": delivered / span, "shares": shares}


def memory_per_event(redis_url: str, count: int) -> dict[str, float]:
    import redis

    from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

    admin = redis.Redis.from_url(redis_url)
    admin.delete(STREAM)
    before = int(admin.info("memory")["used_memory"])
    spool = RedisStreamSpool(redis_url)
    records = backlog_records("https://api.zaius.com", count)
    for start in range(0, count, 1000):
        spool.append(records[start:start + 1000])
    unread = int(admin.info("memory")["used_memory"])
    claimed = 0
    while claimed < count:
        claimed += len(spool.claim(5000))
    pending = int(admin.info("memory")["used_memory"])
    spool.close()
    admin.delete(STREAM)
    size = sum(len(r.body) for r in records) / count
    return {"unread": (unread - before) / count, "pending": (pending - before) / count, "body": size}


def render(args: argparse.Namespace, costs: dict[str, dict[str, Any]], drains: list[dict[str, Any]],
           memory: dict[str, float], redis_version: str) -> str:
    import optimizely.version

    labels = {"fleet": "OdpOptimizely, `spool_url` (Redis), delivering too",
              "producer": "OdpOptimizely, `spool_url` (Redis), `deliver=False`",
              "memory": "OdpOptimizely, no spool",
              "official": f"official optimizely-sdk {optimizely.version.__version__}"}
    fleet = costs["fleet"]
    lines = [
        "## The fleet on Redis (benchmarks/redis_fleet.py)",
        "",
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores (shared with other "
        f"work: absolute figures are noisy, compare the rows), redis-server {redis_version} on 127.0.0.1 with AOF "
        f"`everysec`; command: `python benchmarks/redis_fleet.py{' --quick' if args.quick else ''}`.",
        "",
        f"### Caller cost at {args.rate:,.0f} events/s from one thread ({args.events:,} events)",
        "",
        "| client | p50 | p99 | p99.9 | max | achieved rate | process CPU per event |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        c = costs[mode]
        lines.append(f"| {labels[mode]} | {c['p50']:.1f} µs | {c['p99']:.1f} µs | {c['p999']:.1f} µs | "
                     f"{c['max'] / 1000:.2f} ms | {c['rate']:,.0f}/s | {c['cpu']:.0f} µs |")
    verdict = "met" if fleet["p99"] <= 1000 else "NOT met"
    lines += ["", f"Budget caller p99 ≤ 1 ms with the Redis spool: **{verdict}** ({fleet['p99']:.1f} µs; "
              f"{fleet['p99'] / max(costs['memory']['p99'], 1e-9):.1f}× the p99 without a spool). Process CPU per "
              "event counts every thread of the client's process (sending, appending, claiming, delivering) "
              "from the first send to the end of close()."]
    lines += ["", "### The durability window (send → in Redis)", ""]
    for mode in ("fleet", "producer"):
        window = costs[mode].get("window_ms") or []
        if window:
            lines.append(f"- {labels[mode]}: p50 {percentile(window, 0.5):.1f} ms, p90 {percentile(window, 0.9):.1f} "
                         f"ms, p99 {percentile(window, 0.99):.1f} ms, max {window[-1]:.1f} ms over {len(window):,} "
                         "events.")
    lines += ["", "From `send_odp_event` to the return of the append that stored the event; an event accepted "
              "but not yet in Redis is lost if its process dies."]
    lines += ["", f"### Drain rate of a backlog of {args.backlog:,} events at {args.latency * 1000:.0f} ms per "
              "request", "", "| members | events/s | vs 1 member | each member's share |",
              "| ---: | ---: | ---: | --- |"]
    base = drains[0]["rate"]
    for d in drains:
        shares = ", ".join(f"{s:,}" for s in d["shares"])
        lines.append(f"| {d['members']} | {d['rate']:,.0f} | {d['rate'] / base:.2f}× | {shares} |")
    lines += ["", "### Redis memory per waiting event", "",
              f"{memory['unread']:,.0f} bytes unread, {memory['pending']:,.0f} bytes claimed (pending), for events "
              f"of {memory['body']:,.0f} bytes of JSON (`used_memory` growth over {args.memory_events:,} events)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 30 s)")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced sends per second (default 5000)")
    parser.add_argument("--events", type=int, help="events per caller-cost run (default 30,000; quick 10,000)")
    parser.add_argument("--backlog", type=int, help="events to drain (default 40,000; quick 20,000)")
    parser.add_argument("--latency", type=float, default=0.05, help="collector delay per request (default 0.05)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "caller":
            child_caller(rest[0], rest[1], rest[2], int(rest[3]), float(rest[4]))
        else:
            child_member(rest[0])
        return 0
    args.events = args.events or (10_000 if args.quick else 30_000)
    args.backlog = args.backlog or (20_000 if args.quick else 40_000)
    args.memory_events = 10_000 if args.quick else 50_000

    from optimizely_odp_ext.testing.redis_server import RedisServer

    with RedisServer() as server:
        version = str(server.execute("INFO", "server")).split("redis_version:")[1].split("\\r")[0]
        costs = caller_cost(server.url, args.events, args.rate)
        drains = [drain(server.url, args.backlog, members, args.latency) for members in (1, 2, 4)]
        memory = memory_per_event(server.url, args.memory_events)
    print(render(args, costs, drains, memory, version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
