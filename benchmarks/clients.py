"""The client side of the drain, CPU and caller-tail runs: one client in this process, events sent
from one or more threads, every call timed. Started by the benchmarks as
``python benchmarks/clients.py --child SPEC``; never run by hand.

SPEC (JSON): ``client`` (``official``, ``ours``, ``ours-0.1.0`` — ours with the previous release's
package first on ``sys.path`` —, ``null``: a send that only copies its input, the harness alone,
or ``encode``: a send that only encodes the event as the floor does, keeping its bytes), ``url``,
``events``, ``threads``, ``size`` (see :data:`common.SIZES`), ``rate`` (events/s over all threads,
None: as fast as each call returns), ``settings`` (keyword arguments of our
``BatchEventManager``), ``drain`` (wait until delivered: ours ``flush``, the official ``close``)
and ``timeout``.

Protocol: ``READY {...}``, then ``GO`` on stdin starts the timed region; one ``RESULT {...}``.
CPU is the process's user+sys time (``getrusage``) from the first send until everything was
delivered (``drain``) or the last call returned; the callers' share is each sending thread's
``time.thread_time()``; the rest is the client's background threads.
"""

from __future__ import annotations

import array
import gc
import json
import resource
import sys
import threading
import time
from typing import Any

import common


def build_client(kind: str, url: str, settings: dict[str, Any]) -> tuple[Any, Any]:
    """(client or None, its send function)."""
    if kind == "null":
        def send(action: str, identifiers: dict[str, str], type: str = "fullstack",
                 data: dict[str, Any] | None = None) -> bool:
            return bool(dict(identifiers)) and (data is None or bool(dict(data)))
        return None, send
    if kind == "encode":
        from floor import wire_event

        bodies: list[bytes] = []

        def encode(action: str, identifiers: dict[str, str], type: str = "fullstack",
                   data: dict[str, Any] | None = None) -> bool:
            event = wire_event(0, data or {})
            event["identifiers"] = dict(identifiers)
            bodies.append(json.dumps(event).encode())
            return True
        return None, encode

    from optimizely.optimizely import Optimizely

    from optimizely_odp_ext import BatchEventManager, OdpOptimizely
    from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile

    datafile = json.dumps(sample_datafile(host=url, api_key=common.API_KEY))
    client: Any
    if kind == "official":
        client = Optimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher())
    else:
        manager = BatchEventManager(**settings) if settings else None
        client = OdpOptimizely(datafile=datafile, event_dispatcher=RecordingEventDispatcher(),
                               odp_event_manager=manager)
    return client, client.send_odp_event


def encoder_in_use() -> str:
    try:
        from optimizely_odp_ext import encoding
    except ImportError:
        return "json (0.1.0 has no choice)"
    name = getattr(encoding, "encoder_name", None)
    return str(name() if callable(name) else getattr(encoding, "ENCODER", "json"))


def run(spec: dict[str, Any]) -> dict[str, Any]:
    kind, events, threads = spec["client"], spec["events"], spec.get("threads", 1)
    rate = spec.get("rate")
    client, send = build_client(kind, spec["url"], spec.get("settings") or {})
    pool = common.data_pool(spec.get("size", "small"), events)
    for i in range(spec.get("warmup", 10)):
        send("bench_warmup", {"fs_user_id": f"warmup-{i}"}, data={"n": i})
    if client is not None and kind != "official":
        client.flush(10.0)
    gc.collect()
    gc.freeze()  # the harness's own objects (the data pool) are not the clients' garbage to scan
    gc_timer = common.GcTimer().install()

    shares = [events // threads + (1 if t < events % threads else 0) for t in range(threads)]
    starts = [sum(shares[:t]) for t in range(threads)]
    durations = [array.array("q", bytes(8 * share)) for share in shares]
    accepted = [0] * threads
    caller_cpu = [0.0] * threads
    barrier = threading.Barrier(threads + 1)
    per_thread_rate = rate / threads if rate else None

    def caller(t: int) -> None:
        mine, start, count = durations[t], starts[t], shares[t]
        clock = time.perf_counter_ns
        size = len(pool)
        ok = 0
        barrier.wait()
        cpu0 = time.thread_time()
        began = time.perf_counter()
        for j in range(count):
            i = start + j
            identifiers = {"fs_user_id": f"user-{i}"}
            data = pool[i % size]
            if per_thread_rate:
                ahead = began + j / per_thread_rate - time.perf_counter()
                if ahead > 0.001:
                    time.sleep(ahead)
            t0 = clock()
            result = send("bench", identifiers, data=data)
            t1 = clock()
            mine[j] = t1 - t0
            if result is None or result:  # the official client returns None
                ok += 1
        caller_cpu[t] = time.thread_time() - cpu0
        accepted[t] = ok

    workers = [threading.Thread(target=caller, args=(t,), name=f"caller-{t}") for t in range(threads)]
    for worker in workers:
        worker.start()
    common.ready_and_wait({"encoder": encoder_in_use(), "package": _package_file()})

    rss_before = common.rss_kib()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    first_send = time.time()
    barrier.wait()
    for worker in workers:
        worker.join()
    last_send = time.time()
    usage_sent = resource.getrusage(resource.RUSAGE_SELF)
    threads_during = {name: cpu for name, cpu in common.threads_cpu_s().items()}

    ending: dict[str, Any] = {}
    if spec.get("drain", True) and client is not None:
        def end() -> None:
            if kind == "official":
                ending["close_returned_early"] = common.close_official(client)
            else:
                ending["flushed"] = client.flush(spec.get("timeout", 60.0))
            ending["done"] = True

        closer = threading.Thread(target=end, name="bench-end", daemon=True)
        closer.start()
        closer.join(spec.get("timeout", 60.0) + 5.0)
    end_time = time.time()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    stats = client.odp_stats() if client is not None and kind != "official" else None
    background = _background_threads()

    everything = sorted(value for part in durations for value in part)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    cpu_send = (usage_sent.ru_utime - usage_before.ru_utime) + (usage_sent.ru_stime - usage_before.ru_stime)
    result = {
        "client": kind,
        "events": events,
        "threads": threads,
        "accepted": sum(accepted),
        "first_send": first_send,
        "last_send": last_send,
        "end_time": end_time,
        "timed_out": spec.get("drain", True) and client is not None and not ending.get("done", False),
        "flushed": ending.get("flushed"),
        "close_returned_early": ending.get("close_returned_early"),
        "p50_us": common.percentile(everything, 0.50) / 1000,
        "p99_us": common.percentile(everything, 0.99) / 1000,
        "p999_us": common.percentile(everything, 0.999) / 1000,
        "max_us": everything[-1] / 1000 if everything else 0.0,
        "mean_us": sum(everything) / len(everything) / 1000 if everything else 0.0,
        "over_5ms": sum(1 for value in everything if value > 5_000_000),
        "cpu_s": cpu,
        "cpu_send_phase_s": cpu_send,
        "cpu_callers_s": sum(caller_cpu),
        "threads_cpu_s": threads_during,
        "background_threads": background,
        "peak_rss_kib": usage_after.ru_maxrss,
        "rss_before_kib": rss_before,
        "rss_end_kib": common.rss_kib(),
        "stats": stats,
        "encoder": encoder_in_use(),
        **gc_timer.report(),
    }
    if client is not None and kind != "official":
        client.close(5.0)
    return result


def _package_file() -> str:
    module = sys.modules.get("optimizely_odp_ext")
    return str(getattr(module, "__file__", "")) if module else ""


def _background_threads() -> dict[str, int]:
    names: dict[str, int] = {}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.name.startswith(("caller-", "bench-")):
            continue
        key = thread.name.split(":")[0]
        names[key] = names.get(key, 0) + 1
    return names


# ============================================================================ parent side

VARIANTS: dict[str, tuple[str, dict[str, str], bool]] = {
    "official": ("official", {}, False),
    "ours-json": ("ours", {"OPTIMIZELY_ODP_ENCODER": "json"}, False),
    "ours-ujson": ("ours", {}, False),
    "ours-0.1.0": ("ours", {}, True),
    "null": ("null", {}, False),
    "encode": ("encode", {}, False),
}
"""A client as the reports name it -> (client kind, environment, run the previous release's package)."""
REFERENCES = ("null", "encode")
"""Client kinds that send nothing to the collector: the harness's references."""


def measure(variant: str, *, events: int, threads: int = 1, size: str = "small", latency_ms: float = 0.0,
            rate: float | None = None, settings: dict[str, Any] | None = None, drain: bool = True,
            fault_status: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Run one client process against a fresh collector; its RESULT plus what the collector saw:
    ``delivered``, ``requests``, ``connections``, ``first_delivery``/``last_delivery``,
    ``drain_rate`` (delivered / (last delivery - first send)) and ``cpu_us_per_event`` (process CPU of
    the timed region / delivered). ``fault_status``: the collector answers it from GO on."""
    kind, env, previous = VARIANTS[variant]
    package = common.previous_package() if previous else None
    if previous and package is None:
        raise RuntimeError("the previous release's code could not be extracted (git archive)")
    spec = {"client": kind, "events": events, "threads": threads, "size": size, "rate": rate,
            "settings": settings or {}, "drain": drain, "timeout": timeout}
    with common.collector(latency_ms) as (server, deliveries):
        spec["url"] = server.url
        child = common.ChildProcess("clients.py", spec, env=env, package=package)
        try:
            ready = child.expect_json("READY", 120)
            if kind not in REFERENCES and not server.wait_for_events(10, 30.0):
                raise RuntimeError(f"{variant}: the warm-up events never arrived")
            if variant == "ours-ujson" and ready.get("encoder") != "ujson":
                raise RuntimeError("ours-ujson: ujson is not installed (pip install -e '.[fast]')")
            if previous and not str(ready.get("package", "")).startswith(str(package)):
                raise RuntimeError(f"ours-0.1.0 imported {ready.get('package')}, not the previous release")
            server.clear()
            deliveries.reset()
            connections_before = server.connections_opened()
            if fault_status:
                server.respond_with(fault_status)
            child.say("GO")
            limit = timeout + 60 + events / 1000
            result = child.expect_json("RESULT", limit)
            if drain and kind not in REFERENCES and not fault_status:
                common.wait_delivered(server, deliveries, child, events if kind != "official" else None, 30.0)
        finally:
            child.cleanup()
        result.update(
            variant=variant, size=size, latency_ms=latency_ms, rate=rate,
            delivered=deliveries.count, requests=server.request_count(),
            connections=server.connections_opened() - connections_before,
            first_delivery=deliveries.first, last_delivery=deliveries.last,
        )
    span = result["last_delivery"] - result["first_send"]
    result["drain_rate"] = result["delivered"] / span if result["delivered"] and span > 0 else None
    result["cpu_us_per_event"] = (result["cpu_s"] / result["delivered"] * 1e6) if result["delivered"] else None
    result["cpu_us_per_call"] = result["cpu_s"] / events * 1e6
    return result


if __name__ == "__main__":
    common.child_main(run)
