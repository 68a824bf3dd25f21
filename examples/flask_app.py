"""A Flask app with one ``OdpOptimizely`` per process: an ODP event per request, closed at exit.

Run (Flask is not a dependency of this package: ``pip install flask``):

    optimizely-odp collector --port 8090 --api-key example-key      # a local ODP collector
    ODP_EXAMPLE_COLLECTOR_URL=http://127.0.0.1:8090 flask --app examples/flask_app.py run
    curl 'http://127.0.0.1:5000/buy?user=ada&sku=A-1'

With gunicorn (several worker processes), see ``gunicorn.conf.py``.

Environment:
    ODP_EXAMPLE_DATAFILE       path of a datafile (JSON). Default: the bundled sample datafile,
                               its ODP integration pointing at ODP_EXAMPLE_COLLECTOR_URL
                               (default http://127.0.0.1:8090) with key ODP_EXAMPLE_API_KEY
                               (default example-key).
    OPTIMIZELY_ODP_*           the event manager's settings (README, "Configuration").

Lifecycle: the client is built when this module is imported, once per process (under
``gunicorn --preload``, in the master, before the workers are forked). Its default
``BatchEventManager`` sends from background threads, so a request never waits for ODP.
``close_client`` is registered with ``atexit``: when the interpreter exits normally it delivers
what is still queued (within the ``close_timeout`` setting) and stops the client. ``atexit``
does not run on SIGKILL or ``os._exit()``: a server that ends processes that way must call
``close_client`` from its own shutdown hook (gunicorn: ``worker_exit``, as gunicorn.conf.py does).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from optimizely.event.event_processor import ForwardingEventProcessor

from optimizely_odp_ext import BatchEventManager, OdpOptimizely
from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile


def load_datafile() -> str:
    """The datafile at ``ODP_EXAMPLE_DATAFILE``, else the bundled sample pointing at the collector."""
    path = os.environ.get("ODP_EXAMPLE_DATAFILE")
    if path:
        return Path(path).read_text()
    host = os.environ.get("ODP_EXAMPLE_COLLECTOR_URL", "http://127.0.0.1:8090")
    return json.dumps(sample_datafile(host, os.environ.get("ODP_EXAMPLE_API_KEY", "example-key")))


def build_client(**manager_settings: Any) -> OdpOptimizely:
    """A client for this process; ``manager_settings`` go to its ``BatchEventManager``
    (e.g. ``spool_path``). Raises ``SettingError`` on a bad setting."""
    # Keeps the base SDK's impression events on this machine for the example; leave it out in production.
    dispatcher = RecordingEventDispatcher()
    return OdpOptimizely(
        datafile=load_datafile(),
        logger=logging.getLogger("optimizely"),
        event_dispatcher=dispatcher,
        # No base SDK thread for impressions: a thread would not survive gunicorn --preload's fork.
        event_processor=ForwardingEventProcessor(dispatcher),
        odp_event_manager=BatchEventManager(**manager_settings),
    )


_client = build_client()


def odp_client() -> OdpOptimizely:
    """This process's client. Non-blocking; thread-safe."""
    return _client


def replace_client(new_client: OdpOptimizely) -> None:
    """Use ``new_client`` from now on and close the previous one without waiting (gunicorn.conf.py
    does this in a fresh worker, to give it a spool of its own). Call before serving requests."""
    global _client
    previous, _client = _client, new_client
    # Only the previous client's ODP manager: in a forked worker the base SDK's own queues may
    # still hold a lock taken by a master thread at the fork, so its close() could hang.
    if previous.odp_event_manager is not None:
        previous.odp_event_manager.close(timeout=0)


def close_client(timeout: float | None = None) -> None:
    """Deliver what was accepted (within ``timeout`` seconds, default the ``close_timeout``
    setting) and stop the client. Idempotent; blocks; thread-safe."""
    _client.close(timeout)


atexit.register(close_client)


def create_app() -> Flask:
    """The Flask application: ``GET /buy?user=...&sku=...`` decides a flag and sends an ODP event."""
    app = Flask(__name__)

    @app.get("/buy")
    def buy() -> ResponseReturnValue:
        user = request.args.get("user", "")
        if not user:
            return jsonify(error="the user parameter is required"), 400
        client = odp_client()
        user_context = client.create_user_context(user)  # None only if the datafile is invalid
        variation = user_context.decide("checkout_redesign").variation_key if user_context else None
        result = client.send_odp_event(  # never raises, never blocks
            "purchase", {"fs_user_id": user}, data={"sku": request.args.get("sku", "unknown"), "variation": variation},
        )
        # The purchase succeeded whatever became of its ODP event: report it, don't fail the request.
        odp = "accepted" if result else f"discarded ({result.reason})"
        return jsonify(variation=variation, odp=odp)

    return app


app = create_app()
