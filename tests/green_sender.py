"""Sends ODP events from green threads under gevent's or eventlet's monkey-patching, then
flushes, closes or just exits: run by tests/test_green_threads.py in a subprocess.

Usage: python green_sender.py gevent|eventlet MODE COLLECTOR_URL API_KEY COUNT

MODE: ``background`` (no flush: wait until the sender delivered), ``flush``, ``close``,
``exit`` (neither: the interpreter's exit delivers), or ``preload-fork``: the client is built
before monkey-patching, the process forks, and the child patches and sends, as a worker of
``gunicorn --preload -k gevent`` does. Prints one JSON line with what the client says.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

LIBRARY, MODE, URL, KEY, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
SENDERS = 10
WATCHDOG = 10.0
"""preload-fork: seconds after which a hung child dumps its stacks and exits with status 1."""


def patch() -> tuple[Callable[[list[tuple[Callable[..., None], tuple[int, int]]]], None], Callable[[float], None]]:
    """Monkey-patch with LIBRARY; return (run these green threads to completion, green sleep)."""
    if LIBRARY == "gevent":
        from gevent import monkey

        monkey.patch_all()
        import gevent

        def run_gevent(tasks: list[tuple[Callable[..., None], tuple[int, int]]]) -> None:
            gevent.joinall([gevent.spawn(task, *args) for task, args in tasks], raise_error=True)

        return run_gevent, gevent.sleep
    if LIBRARY == "eventlet":
        import eventlet

        eventlet.monkey_patch()

        def run_eventlet(tasks: list[tuple[Callable[..., None], tuple[int, int]]]) -> None:
            pool = eventlet.GreenPool()
            for task, args in tasks:
                pool.spawn(task, *args)
            pool.waitall()

        return run_eventlet, eventlet.sleep
    raise SystemExit(f"unknown library {LIBRARY}")


if MODE != "preload-fork":
    run_green, green_sleep = patch()  # first, before anything else is imported, as gevent asks

import faulthandler  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from optimizely.event.event_processor import ForwardingEventProcessor  # noqa: E402

from optimizely_odp_ext import OdpOptimizely  # noqa: E402
from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile  # noqa: E402

dispatcher = RecordingEventDispatcher()
client = OdpOptimizely(datafile=json.dumps(sample_datafile(URL, KEY)), event_dispatcher=dispatcher,
                       event_processor=ForwardingEventProcessor(dispatcher))

if MODE == "preload-fork":
    child = os.fork()
    if child:
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)  # a C thread: works even if the hub is frozen
    run_green, green_sleep = patch()


def send(first: int, count: int) -> None:
    for i in range(first, first + count):
        result = client.send_odp_event("viewed", {"fs_user_id": f"user-{i}"}, data={"n": i})
        assert result, result.message
        if i % 50 == 0:
            green_sleep(0)  # let the other green threads in, as a server's I/O would


per_sender = COUNT // SENDERS
run_green([(send, (k * per_sender, per_sender)) for k in range(SENDERS)])

report: dict[str, Any] = {}
if MODE == "background":  # no flush: the sender delivers on its own while the main green thread idles
    deadline = time.monotonic() + 30
    while client.odp_stats()["delivered"] < COUNT and time.monotonic() < deadline:
        green_sleep(0.01)
elif MODE == "flush":
    report["flushed"] = client.flush(timeout=30)
elif MODE in ("close", "preload-fork"):
    client.close(timeout=30)
report["stats"] = client.odp_stats()
print(json.dumps(report), flush=True)
# MODE "exit": no close; the interpreter's exit delivers what is pending (within exit_timeout).
