"""Sizing figures for the Redis spool, by hand (not in CI): append and delivery throughput of one
Python process, and Redis memory per waiting event.

Run from the repository root (needs ``redis-server`` and ``pip install -e '.[redis]'``)::

    PYTHONPATH=. python benchmarks/redis_store.py                    # 100,000 events, groups of 500
    PYTHONPATH=. python benchmarks/redis_store.py --events 20000 --batch 100
    PYTHONPATH=. python benchmarks/redis_store.py --url redis://host:6379/0 --stream bench:events

Without ``--url`` it starts its own ``redis-server`` on 127.0.0.1 (AOF on, ``everysec``, as the
tests do) and deletes it afterwards; with ``--url`` it uses the given stream, which it deletes
before and after: never point it at a stream in use.

What it measures, in order:

1. **append**: ``RedisStreamSpool.append`` of ``--batch`` events at a time (one ``MULTI``/``EXEC``
   pipeline of ``XADD``) from one thread: events/s and the latency of one call (p50, p99).
2. **memory while unread**: ``MEMORY USAGE <stream> SAMPLES 0`` (exact: every node) divided by
   the number of events, and the growth of ``used_memory`` (``INFO memory``) since before the
   appends, which also counts the AOF buffers.
3. **memory while pending**: the same after one consumer claimed every event (each pending
   entry also sits in the group's pending list and the consumer's).
4. **claim + ack**: ``claim(--batch)`` then ``ack`` of what it returned, until the stream is
   empty: events/s.

The events are real ODP events (``OdpEvent.to_json``: type, action, an ``fs_user_id``, the
default data and two fields of the caller's), destination host and a 22-character public key.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from optimizely_odp_ext.event import OdpEvent
from optimizely_odp_ext.spool.base import SpoolRecord
from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool
from optimizely_odp_ext.testing.redis_server import RedisServer

HOST, KEY = "https://api.zaius.com", "W4WzcEs-ABgXorzY7h1LCQ"


def make_records(count: int) -> list[SpoolRecord]:
    now = time.time()
    return [SpoolRecord(HOST, KEY, OdpEvent("fullstack", "purchase", {"fs_user_id": f"user-{i:08d}"},
                                            {"value": 12.5, "sku": f"sku-{i % 1000}"}).to_json(), now)
            for i in range(count)]


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(url: str, stream: str, events: int, batch: int) -> dict[str, float]:
    import redis

    admin = redis.Redis.from_url(url)
    admin.delete(stream)
    spool = RedisStreamSpool(url, stream=stream, group="bench", claim_after=600)
    records = make_records(events)
    body_bytes = statistics.mean(len(r.body) for r in records)
    memory_before = used_memory(admin)

    latencies = []
    started = time.perf_counter()
    for start in range(0, events, batch):
        call = time.perf_counter()
        spool.append(records[start:start + batch])
        latencies.append(time.perf_counter() - call)
    append_seconds = time.perf_counter() - started

    unread_bytes = int(admin.memory_usage(stream, samples=0) or 0)
    unread_used = used_memory(admin) - memory_before

    claimed = []
    while chunk := spool.claim(10_000):
        claimed += chunk
    assert len(claimed) == events, (len(claimed), events)
    pending_bytes = int(admin.memory_usage(stream, samples=0) or 0)
    pending_used = used_memory(admin) - memory_before
    for start in range(0, events, 10_000):  # hand everything back for the delivery run
        spool.release([e.id for e in claimed[start:start + 10_000]])

    deliverer = RedisStreamSpool(url, stream=stream, group="bench", claim_after=600)
    started = time.perf_counter()
    delivered = 0
    while chunk := deliverer.claim(batch):
        deliverer.ack([e.id for e in chunk])
        delivered += len(chunk)
    deliver_seconds = time.perf_counter() - started
    assert delivered == events, (delivered, events)
    left = admin.xlen(stream)
    spool.close()
    deliverer.close()
    admin.delete(stream)
    admin.close()
    return {
        "events": events, "batch": batch, "body_bytes": body_bytes,
        "append_per_s": events / append_seconds,
        "append_call_p50_ms": percentile(latencies, 0.5) * 1000,
        "append_call_p99_ms": percentile(latencies, 0.99) * 1000,
        "unread_bytes_per_event": unread_bytes / events, "unread_used_per_event": unread_used / events,
        "pending_bytes_per_event": pending_bytes / events, "pending_used_per_event": pending_used / events,
        "claim_ack_per_s": delivered / deliver_seconds, "left": left,
    }


def report(figures: dict[str, float], where: str) -> str:
    return "\n".join([
        f"Redis spool, one Python process, {where}",
        f"  events: {figures['events']:,.0f} of {figures['body_bytes']:.0f} bytes of JSON, "
        f"appended {figures['batch']:.0f} per call",
        f"  append:          {figures['append_per_s']:>10,.0f} events/s "
        f"(one call: p50 {figures['append_call_p50_ms']:.2f} ms, p99 {figures['append_call_p99_ms']:.2f} ms)",
        f"  claim + ack:     {figures['claim_ack_per_s']:>10,.0f} events/s",
        f"  memory, unread:  {figures['unread_bytes_per_event']:>10.0f} bytes/event (MEMORY USAGE), "
        f"{figures['unread_used_per_event']:.0f} (used_memory growth)",
        f"  memory, pending: {figures['pending_bytes_per_event']:>10.0f} bytes/event (MEMORY USAGE), "
        f"{figures['pending_used_per_event']:.0f} (used_memory growth)",
        f"  left in the stream after ack: {figures['left']:.0f}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing Redis (default: start a local redis-server)")
    parser.add_argument("--stream", default="optimizely-odp:bench")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if args.url:
        print(report(run(args.url, args.stream, args.events, args.batch), "against " + args.url))
        return
    with RedisServer() as server:
        version = server.execute("INFO", "server").decode().split("redis_version:")[1].split()[0]
        figures = run(server.url, args.stream, args.events, args.batch)
    print(report(figures, f"redis-server {version} on 127.0.0.1 (AOF everysec)"))


if __name__ == "__main__":
    main()
