"""The floor: the CPU a sender cannot go below on this machine, measured the same way as
/work/shared/BASELINE.md, in the same run as the clients.

A minimal sender in its own process: the events (the same wire dicts our client and the
official one send, built beforehand and not timed) are encoded one by one with ``json.dumps``
(standard library, default separators), joined into 500-event bodies, and POSTed over one
keep-alive ``requests.Session`` to the same collector (a separate process, TCP_NODELAY), one
request at a time. CPU per event = the sending thread's CPU (``time.thread_time()``, the only
thread) over encode + join + POST, divided by the events delivered; the three parts are
reported too. With ``--encoder ujson``: the same with ujson in place of ``json.dumps`` (the
floor of the ``[fast]`` extra; issue 10's goal is against the standard library's).

Run alone (prints only)::

    python benchmarks/floor.py                 # the three event sizes, 3 runs each, median
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import common

BATCH = 500


def wire_event(i: int, data: dict[str, Any]) -> dict[str, Any]:
    """Event ``i`` as ODP receives it (the official client's shape: default data first)."""
    return {"type": "fullstack", "action": "bench", "identifiers": {"fs_user_id": f"user-{i}"},
            "data": {"idempotence_id": str(uuid.uuid4()), "data_source_type": "sdk", "data_source": "python-sdk",
                     "data_source_version": "5.7.0", **data}}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import requests

    if spec.get("encoder") == "ujson":
        import ujson

        def dumps(value: Any) -> str:
            text: str = ujson.dumps(value, ensure_ascii=True, escape_forward_slashes=False,
                                    separators=(", ", ": "))
            return text
    else:
        dumps = json.dumps
    events, size = spec["events"], spec["size"]
    pool = common.data_pool(size, events)
    session = requests.Session()
    url = spec["url"] + "/v3/events"
    headers = {"content-type": "application/json", "x-api-key": common.API_KEY}
    warmup = [wire_event(i, {"n": i}) for i in range(10)]
    _ = session.post(url, data=("[" + ", ".join(dumps(e) for e in warmup) + "]").encode(), headers=headers).text
    common.ready_and_wait()
    encode_s = join_s = post_s = 0.0
    clock = time.thread_time
    for start in range(0, events, BATCH):
        wire = [wire_event(i, pool[i % len(pool)]) for i in range(start, min(events, start + BATCH))]
        t0 = clock()
        parts = [dumps(event) for event in wire]
        t1 = clock()
        body = ("[" + ", ".join(parts) + "]").encode()
        t2 = clock()
        _ = session.post(url, data=body, headers=headers).text  # read it all: keep-alive
        t3 = clock()
        encode_s += t1 - t0
        join_s += t2 - t1
        post_s += t3 - t2
    return {"encode_s": encode_s, "join_s": join_s, "post_s": post_s, "cpu_s": encode_s + join_s + post_s,
            "events": events}


def measure(size: str, events: int, encoder: str = "json") -> dict[str, Any]:
    """One floor run against a fresh collector: CPU µs per delivered event, and its parts."""
    with common.collector(0.0) as (server, deliveries):
        process = common.ChildProcess("floor.py", {"url": server.url, "size": size, "events": events,
                                                   "encoder": encoder})
        try:
            process.expect("READY", 60)
            server.wait_for_events(10, 30.0)
            server.clear()
            deliveries.reset()
            process.say("GO")
            result = process.expect_json("RESULT", 120 + events / 500)
        finally:
            process.cleanup()
        delivered = deliveries.count
    per = 1e6 / delivered if delivered else 0.0
    return {"size": size, "encoder": encoder, "delivered": delivered, "cpu_us_per_event": result["cpu_s"] * per,
            "encode_us": result["encode_s"] * per, "join_us": result["join_s"] * per,
            "post_us": result["post_s"] * per}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-key median of several runs of the same floor."""
    out = dict(runs[0])
    for key in ("cpu_us_per_event", "encode_us", "join_us", "post_us"):
        out[key] = common.median([run[key] for run in runs])
    out["runs"] = [run["cpu_us_per_event"] for run in runs]
    return out


def render(floors: dict[tuple[str, str], dict[str, Any]]) -> str:
    rows = []
    for (size, encoder), f in floors.items():
        rows.append([common.SIZE_LABELS[size], "stdlib json" if encoder == "json" else encoder,
                     common.fmt_us(f["encode_us"]), common.fmt_us(f["join_us"]), common.fmt_us(f["post_us"]),
                     f"**{common.fmt_us(f['cpu_us_per_event'])}**",
                     f"{1e6 / f['cpu_us_per_event']:,.0f}" if f["cpu_us_per_event"] else "n/a",
                     ", ".join(common.fmt_us(v) for v in f["runs"])])
    return common.table(["event data", "encoder", "encode µs", "join µs", "1/500 of a POST µs", "floor µs/event",
                         "one core ⇒ events/s", "runs"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--encoder", choices=("json", "ujson"), nargs="+", default=["json", "ujson"])
    args = parser.parse_args()
    floors = {}
    for size, events in (("small", 50_000), ("2k", 20_000), ("20k", 4_000)):
        for encoder in args.encoder:
            floors[(size, encoder)] = median_of([measure(size, events, encoder) for _ in range(args.repeat)])
    print(render(floors))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        common.child_main(child)
    else:
        sys.exit(main())
