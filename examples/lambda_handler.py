"""An AWS Lambda handler that sends ODP events with ``SyncEventManager``: no background thread.

Lambda freezes a container between invocations, so a sender thread could be frozen with
events still queued. Here nothing runs outside the handler: the client is built once per
container, when Lambda loads this module, and each invocation's events are delivered on the
handler's own thread by ``client.flush(...)`` before it returns, within the time the
invocation has left (``context.get_remaining_time_in_millis()``).

If ODP cannot be reached in that time, ``flush`` returns False and the events stay in the
container's memory; the next invocation's flush retries them. They are lost if Lambda
retires the container first. ``client.odp_stats()`` counts them, and so does the warning
logged below.

Deploy: handler ``lambda_handler.handler``, with ``ODP_EXAMPLE_DATAFILE`` set to the path
of a datafile bundled with the function (or build the client with ``sdk_key=...``).
Invocation event: ``{"user_id": "user-1", "events": [{"action": "purchase", "data": {...}}]}``.

Run it locally: ``python examples/lambda_handler.py`` starts an ODP collector on 127.0.0.1
(unless ``ODP_EXAMPLE_COLLECTOR_URL`` names one), invokes the handler twice with a fake
event and context, and prints what arrived.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from optimizely.event.event_processor import ForwardingEventProcessor

from optimizely_odp_ext import OdpOptimizely, SyncEventManager
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile

FLUSH_TIMEOUT = float(os.environ.get("ODP_EXAMPLE_FLUSH_TIMEOUT", "3"))
"""The most seconds one invocation spends delivering ODP events."""
SAFETY_MARGIN = 0.5
"""Seconds kept back from the invocation's remaining time, to return the response."""
log = logging.getLogger(__name__)


def _start_local_collector() -> OdpCollector | None:
    """Local runs only: a collector on 127.0.0.1 for the client built below to point at."""
    if "ODP_EXAMPLE_COLLECTOR_URL" in os.environ or "ODP_EXAMPLE_DATAFILE" in os.environ:
        return None
    collector = OdpCollector(api_key="example-key").start()
    os.environ["ODP_EXAMPLE_COLLECTOR_URL"] = collector.url
    os.environ["ODP_EXAMPLE_API_KEY"] = "example-key"
    return collector


_local_collector = _start_local_collector() if __name__ == "__main__" else None


def load_datafile() -> str:
    """The datafile at ``ODP_EXAMPLE_DATAFILE``, else the bundled sample with its ODP integration
    pointing at ``ODP_EXAMPLE_COLLECTOR_URL`` (key ``ODP_EXAMPLE_API_KEY``)."""
    path = os.environ.get("ODP_EXAMPLE_DATAFILE")
    if path:
        return Path(path).read_text()
    host = os.environ.get("ODP_EXAMPLE_COLLECTOR_URL", "http://127.0.0.1:8090")
    return json.dumps(sample_datafile(host, os.environ.get("ODP_EXAMPLE_API_KEY", "example-key")))


# Once per container (Lambda's init phase). The RecordingEventDispatcher keeps the base SDK's
# impression events on this machine for the example: in production leave event_dispatcher out.
# ForwardingEventProcessor sends those impressions on the caller's thread too (optimizely-sdk 5.x
# would otherwise run a BatchEventProcessor thread).
_dispatcher = RecordingEventDispatcher()
client = OdpOptimizely(
    datafile=load_datafile(),
    logger=logging.getLogger("optimizely"),
    event_dispatcher=_dispatcher,
    event_processor=ForwardingEventProcessor(_dispatcher),
    odp_event_manager=SyncEventManager(mode="batch"),
)


def flush_budget(context: Any) -> float:
    """Seconds this invocation may spend delivering: ``FLUSH_TIMEOUT``, or less when the
    function has less time left (minus ``SAFETY_MARGIN``)."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining_ms):
        return FLUSH_TIMEOUT
    return max(0.0, min(FLUSH_TIMEOUT, float(remaining_ms()) / 1000 - SAFETY_MARGIN))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Decide a flag for the user, send their ODP events, deliver them, then answer."""
    user_id = str(event.get("user_id") or "")
    if not user_id:
        return {"statusCode": 400, "body": json.dumps({"error": "user_id is required"})}
    user_context = client.create_user_context(user_id)  # None only if the datafile is invalid
    variation = user_context.decide("checkout_redesign").variation_key if user_context else None
    results = [client.send_odp_event(item.get("action", ""), {"fs_user_id": user_id}, data=item.get("data"))
               for item in event.get("events", [])]
    delivered = client.flush(timeout=flush_budget(context))  # blocks, on this thread
    if not delivered:
        log.warning("ODP events not delivered in time; kept for the next invocation: %s", client.odp_stats())
    body = {
        "variation": variation,
        "accepted": sum(1 for result in results if result),
        "refused": [str(result.reason) for result in results if not result],
        "delivered": delivered,
    }
    return {"statusCode": 200, "body": json.dumps(body)}


class FakeContext:
    """The part of Lambda's context object the handler uses."""

    def __init__(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    invocations: list[dict[str, Any]] = [
        {"user_id": "user-1", "events": [{"action": "viewed", "data": {"sku": "A-1"}},
                                         {"action": "purchase", "data": {"sku": "A-1", "price": 42.5}}]},
        {"user_id": "user-2", "events": [{"action": "purchase", "data": {"sku": "B-2", "price": 9.5}},
                                         {"action": ""}]},  # invalid: refused with a reason
    ]
    for number, event in enumerate(invocations, 1):
        response = handler(event, FakeContext(timeout=10))
        print(f"invocation {number}: {response['statusCode']} {response['body']}")
    stats = client.odp_stats()
    print(f"ODP: {stats['delivered']} of {stats['accepted']} accepted events delivered "
          f"in {stats['requests']} requests")
    if _local_collector is not None:
        print(f"the local collector at {_local_collector.url} received {_local_collector.event_count()} events:")
        for received in _local_collector.events:
            print(" ", received["action"], json.dumps(received["identifiers"]), json.dumps(received["data"]["sku"]))
        _local_collector.stop()


if __name__ == "__main__":
    main()
