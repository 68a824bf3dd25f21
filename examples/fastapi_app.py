"""A FastAPI app: the client built in the lifespan, an ODP event per request, ``close_async`` at shutdown.

Run (FastAPI and uvicorn are not dependencies of this package: ``pip install fastapi uvicorn``):

    optimizely-odp collector --port 8090 --api-key example-key      # a local ODP collector
    ODP_EXAMPLE_COLLECTOR_URL=http://127.0.0.1:8090 uvicorn --app-dir examples fastapi_app:app
    curl -X POST 'http://127.0.0.1:8000/buy?user=ada&sku=A-1'

Environment: ``ODP_EXAMPLE_DATAFILE``, ``ODP_EXAMPLE_COLLECTOR_URL``, ``ODP_EXAMPLE_API_KEY``
(as for flask_app.py), ``ODP_EXAMPLE_CLOSE_TIMEOUT`` (seconds the shutdown may spend
delivering, default 10) and the event manager's ``OPTIMIZELY_ODP_*`` settings.

What to know:

- ``send_odp_event`` is synchronous and never blocks (it validates the event and appends it
  to a queue that background threads deliver), so an ``async def`` route calls it directly:
  no ``await``, no thread pool. (Not so with ``SyncEventManager("per_call")``, which POSTs on
  the caller's thread: keep the default ``BatchEventManager`` in async code.)
- ``flush`` and ``close`` do wait for ODP: ``await client.flush_async(t)`` and
  ``await client.close_async(t)`` run them on a thread while the event loop keeps serving.
- The lifespan builds one client per process at startup (each uvicorn worker has its own)
  and closes it at shutdown, so what was accepted is delivered before the process ends.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import RecordingEventDispatcher, sample_datafile

CLOSE_TIMEOUT = float(os.environ.get("ODP_EXAMPLE_CLOSE_TIMEOUT", "10"))


def load_datafile() -> str:
    """The datafile at ``ODP_EXAMPLE_DATAFILE``, else the bundled sample pointing at the collector."""
    path = os.environ.get("ODP_EXAMPLE_DATAFILE")
    if path:
        return Path(path).read_text()
    host = os.environ.get("ODP_EXAMPLE_COLLECTOR_URL", "http://127.0.0.1:8090")
    return json.dumps(sample_datafile(host, os.environ.get("ODP_EXAMPLE_API_KEY", "example-key")))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the client at startup; at shutdown deliver what was accepted and stop it."""
    app.state.odp = OdpOptimizely(
        datafile=load_datafile(),  # or sdk_key="..." in production
        logger=logging.getLogger("optimizely"),
        # Keeps the base SDK's impression events on this machine for the example; leave it out in production.
        event_dispatcher=RecordingEventDispatcher(),
    )
    try:
        yield
    finally:
        await app.state.odp.close_async(timeout=CLOSE_TIMEOUT)  # the loop keeps running meanwhile


app = FastAPI(lifespan=lifespan)


def odp(request: Request) -> OdpOptimizely:
    client: OdpOptimizely = request.app.state.odp
    return client


@app.post("/buy")
async def buy(request: Request, user: str, sku: str = "unknown") -> dict[str, Any]:
    """Decide a flag for ``user`` and send a ``purchase`` event."""
    client = odp(request)
    if not user:
        raise HTTPException(status_code=400, detail="the user parameter is required")
    user_context = client.create_user_context(user)  # None only if the datafile is invalid
    variation = user_context.decide("checkout_redesign").variation_key if user_context else None
    # Synchronous and non-blocking: no await, nothing waits for ODP here.
    result = client.send_odp_event("purchase", {"fs_user_id": user}, data={"sku": sku, "variation": variation})
    # The purchase succeeded whatever became of its ODP event: report it, don't fail the request.
    return {"variation": variation, "odp": "accepted" if result else f"discarded ({result.reason})"}


@app.post("/odp/flush")
async def flush(request: Request, timeout: float = 5.0) -> dict[str, Any]:
    """Deliver what was accepted so far (e.g. before a deploy), without blocking other requests."""
    delivered = await odp(request).flush_async(timeout=min(timeout, 30.0))
    return {"delivered": delivered}


@app.get("/odp/stats")
async def stats(request: Request) -> dict[str, Any]:
    """The client's ODP counters (accepted, delivered, queued, ...)."""
    return odp(request).odp_stats()
