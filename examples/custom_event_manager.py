"""A custom ``EventManager``: hand each ODP event to a queue your fleet already runs.

``OdpOptimizely`` validates every event and binds it to the ODP integration (host and public
key) of the datafile; ``QueueEventManager`` only puts ``(integration, JSON bytes)`` on an
existing ``queue.Queue``. Whatever consumes that queue owns delivery: it POSTs the bytes as
they are (so a retry keeps the event's idempotence id) to ``integration.events_url`` with the
header ``x-api-key: integration.api_key``, batching up to 500 events in a JSON list.

Run: ``python examples/custom_event_manager.py``: a local ODP collector on 127.0.0.1, a worker
thread that drains the queue and POSTs batches to it, and a few events.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, NamedTuple

import requests

from optimizely_odp_ext import DiscardReason, EventManager, OdpEvent, OdpIntegration, OdpOptimizely, SendResult
from optimizely_odp_ext.result import ACCEPTED
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile

API_KEY = "example-key"


class QueuedEvent(NamedTuple):
    """One event as handed to the queue."""

    integration: OdpIntegration
    """Where it goes: ``integration.events_url``, with ``integration.api_key``."""
    body: bytes
    """The event as one JSON object; a request body is a JSON list of these."""


class QueueEventManager(EventManager):
    """Puts each accepted event on ``target`` without waiting.

    ``send`` never blocks and never raises: a full queue refuses the event (``queueFull``).
    Every method is thread-safe (``queue.Queue`` is).
    """

    def __init__(self, target: queue.Queue[QueuedEvent]) -> None:
        self.target = target
        self._closed = False

    def send(self, event: OdpEvent) -> SendResult:
        """Hand one event to the queue. Non-blocking; thread-safe."""
        if self._closed:
            return SendResult.discarded(DiscardReason.CLOSED, "ODP event manager is closed; event discarded.")
        if event.integration is None:  # OdpOptimizely binds every event it hands over
            return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED, "ODP event has no integration; discarded.")
        try:
            self.target.put_nowait(QueuedEvent(event.integration, event.to_json()))
        except queue.Full:
            # A refusal is returned; the client counts it (odp_stats()["refused"]) and logs it.
            return SendResult.discarded(DiscardReason.QUEUE_FULL, "ODP: the event queue is full; event discarded.")
        return ACCEPTED

    def flush(self, timeout: float | None = None) -> bool:
        """True: every accepted event is already on the queue. Delivering it is the consumer's
        job (``target.join()`` waits for that). Non-blocking; thread-safe."""
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Refuse further events. Idempotent; non-blocking; thread-safe."""
        self._closed = True
        return True

    def stats(self) -> dict[str, Any]:
        """The queue's current size (the client adds what it counts itself). Thread-safe."""
        return {"queued": self.target.qsize()}


def post_batches(work: queue.Queue[QueuedEvent], batch_size: int = 500) -> None:
    """A queue worker, such as a fleet may already run: take what is waiting (up to
    ``batch_size``), POST it per destination, mark it done. A real worker would retry failed
    requests with backoff, and split a batch refused with 400 (see optimizely_odp_ext.retry)."""
    session = requests.Session()
    while True:
        items = [work.get()]
        while len(items) < batch_size:
            try:
                items.append(work.get_nowait())
            except queue.Empty:
                break
        by_destination: dict[OdpIntegration, list[bytes]] = {}
        for item in items:
            by_destination.setdefault(item.integration, []).append(item.body)
        for integration, bodies in by_destination.items():
            try:
                response = session.post(integration.events_url, data=b"[" + b",".join(bodies) + b"]", timeout=10,
                                        headers={"content-type": "application/json", "x-api-key": integration.api_key})
                print(f"worker: POST {len(bodies)} events to {integration.events_url} -> HTTP {response.status_code}")
            except requests.RequestException as error:
                print(f"worker: POST {len(bodies)} events failed: {type(error).__name__}")
        for _ in items:
            work.task_done()


def main() -> None:
    with OdpCollector(api_key=API_KEY) as collector:
        work: queue.Queue[QueuedEvent] = queue.Queue(maxsize=10_000)
        threading.Thread(target=post_batches, args=(work,), name="queue-worker", daemon=True).start()
        client = OdpOptimizely(datafile=json.dumps(sample_datafile(collector.url, API_KEY)),
                               event_dispatcher=RecordingEventDispatcher(),
                               odp_event_manager=QueueEventManager(work))
        results = [client.send_odp_event("purchase", {"fs_user_id": f"user-{i}"}, data={"order": i}) for i in range(5)]
        results.append(client.send_odp_event("purchase", {}))  # invalid: refused by the client, never queued
        print("send_odp_event ->", ", ".join("accepted" if r else f"refused ({r.reason})" for r in results))
        client.close()
        work.join()  # the worker has POSTed everything handed to it
        print(f"the collector received {collector.event_count()} events:",
              ", ".join(e["identifiers"]["fs_user_id"] for e in collector.events))
        print("stats:", json.dumps(client.odp_stats(), sort_keys=True))


if __name__ == "__main__":
    main()
