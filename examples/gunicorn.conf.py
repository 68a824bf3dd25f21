"""gunicorn settings for examples/flask_app.py, preloaded, and what becomes of ODP around the fork.

Run from the repository root (``pip install flask gunicorn``; a collector in another terminal:
``optimizely-odp collector --port 8090 --api-key example-key``):

    ODP_EXAMPLE_COLLECTOR_URL=http://127.0.0.1:8090 gunicorn -c examples/gunicorn.conf.py
    curl 'http://127.0.0.1:8000/buy?user=ada'

What to know (the hooks below do what is needed):

1. ``preload_app = True``: flask_app is imported once, in the master, so its ``OdpOptimizely``
   (datafile parsed, settings checked) is built before the workers are forked, and a bad
   setting stops the start-up rather than every worker.
2. After the fork each worker's sender restarts by itself: ``BatchEventManager`` registers
   ``os.register_at_fork``, so the worker gets a fresh queue, lock and HTTP session, and its
   sender threads start with the worker's first event. Nothing to do in ``post_fork``.
3. Events the master queued before the fork stay the master's to deliver; a worker starts
   with an empty queue, so none is sent twice. (The master serves no requests: normally it
   has none.)
4. ``worker_exit`` runs in the worker as it exits (before the interpreter's atexit hooks) and
   closes its client: what the worker accepted is delivered within ``CLOSE_TIMEOUT`` seconds.
   Keep that below ``graceful_timeout``, after which the master SIGKILLs the worker and nothing
   more is sent. (flask_app's own atexit hook then finds the client closed.)
5. A spool (``spool_path``) belongs to one process. Set in the master (e.g.
   ``OPTIMIZELY_ODP_SPOOL_PATH``), the master's client holds it, and each worker falls back to
   memory with a warning. For a durable spool per worker set ``ODP_EXAMPLE_SPOOL_DIR``
   instead: ``post_fork`` then claims a free slot N (an ``flock`` on ``<dir>/odp-slot-N.lock``,
   held for the worker's life) and gives the worker its own client on
   ``<dir>/odp-slot-N.sqlite``. A worker replacing a dead one takes over the free slot and
   delivers what was left in it; ``optimizely-odp spool stats|replay PATH`` deals with a slot
   no worker claims any more. (A spool named after the worker's pid would be orphaned by
   every restart.)
6. The base SDK's own threads do not survive the fork: a client built in the master has no
   ``BatchEventProcessor`` thread (impressions and conversions) and no datafile polling
   thread in the workers. optimizely-odp-ext restarts only its ODP sender. With ``--preload``,
   pass ``event_processor=ForwardingEventProcessor(dispatcher)`` (no thread: impressions are
   dispatched on the request's thread), and build the client in ``post_fork`` instead if you
   rely on an ``sdk_key`` client's datafile updates.
"""

from __future__ import annotations

import fcntl
import itertools
import os
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))

wsgi_app = "flask_app:app"
pythonpath = HERE
bind = os.environ.get("ODP_EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
preload_app = True
graceful_timeout = 30
control_socket_disable = True  # gunicorn >= 26 control socket: not needed here (older versions ignore it)
CLOSE_TIMEOUT = min(float(os.environ.get("ODP_EXAMPLE_CLOSE_TIMEOUT", "10")), graceful_timeout - 5)
SPOOL_DIR = os.environ.get("ODP_EXAMPLE_SPOOL_DIR")

_slot_lock: IO[str] | None = None
"""The worker's claim on its spool slot: open (and locked) for as long as the worker lives."""


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before it serves: only with ODP_EXAMPLE_SPOOL_DIR, a client on a spool of its own."""
    global _slot_lock
    if not SPOOL_DIR:
        return  # the client inherited from the master works as it is
    import flask_app

    os.makedirs(SPOOL_DIR, exist_ok=True)
    for slot in itertools.count():
        lock = open(os.path.join(SPOOL_DIR, f"odp-slot-{slot}.lock"), "a")  # noqa: SIM115 (held for the worker's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _slot_lock = lock
        spool_path = os.path.join(SPOOL_DIR, f"odp-slot-{slot}.sqlite")
        server.log.info("Worker %s: ODP spool %s", worker.pid, spool_path)
        flask_app.replace_client(flask_app.build_client(spool_path=spool_path))
        return


def post_worker_init(worker: Any) -> None:
    """The worker has its signal handlers and the app: from now on SIGTERM drains it. (A SIGTERM
    that reaches a worker still booting is lost, a gunicorn race: it then stops only at
    graceful_timeout, when the master is gone.)"""
    worker.log.info("Worker %s: ready", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: deliver what it accepted, then stop its client."""
    import sys

    module = sys.modules.get("flask_app")
    if module is not None:
        module.close_client(CLOSE_TIMEOUT)
