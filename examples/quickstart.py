"""Quickstart: send ODP events with OdpOptimizely to the bundled local collector.

Run: python examples/quickstart.py
Nothing leaves this machine: the collector listens on 127.0.0.1, and the base SDK's
impression events go to a local recording dispatcher.
"""

from __future__ import annotations

import json
import logging

from optimizely.event.event_processor import ForwardingEventProcessor

from optimizely_odp_ext import OdpOptimizely
from optimizely_odp_ext.testing import OdpCollector, RecordingEventDispatcher, sample_datafile

API_KEY = "quickstart-public-key"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with OdpCollector(api_key=API_KEY) as collector:
        # A datafile whose ODP integration (host, publicKey) points at the local collector.
        datafile = json.dumps(sample_datafile(host=collector.url, api_key=API_KEY))
        # The base SDK's impression events stay in a local recording dispatcher here, handed over
        # as they happen (no batching thread to stop). In production leave both arguments out.
        dispatcher = RecordingEventDispatcher()
        client = OdpOptimizely(datafile=datafile, event_dispatcher=dispatcher,
                               event_processor=ForwardingEventProcessor(dispatcher),
                               logger=logging.getLogger("optimizely"))

        user = client.create_user_context("user-123", {"plan": "pro"})
        decision = user.decide("checkout_redesign")
        print(f"decision for user-123: flag {decision.flag_key!r} -> variation {decision.variation_key!r}")

        results = [
            client.send_odp_event("signed_in", {"fs_user_id": "user-123", "email": "ada@example.com"}),
            client.send_odp_event("purchase", {"fs_user_id": "user-123"}, data={"price": 42.5, "currency": "EUR"}),
            client.send_odp_event("viewed", {"fs_user_id": "user-123"}, type="product", data={"sku": "A-1"}),
            client.send_odp_event("", {"fs_user_id": "user-123"}),  # invalid: refused with a reason (and logged)
        ]
        for result in results:
            print("send_odp_event ->", "accepted" if result else f"discarded ({result.reason}: {result.message})")

        client.close()  # delivers everything accepted, then stops
        print(f"\nthe collector at {collector.url} received {collector.event_count()} events:")
        for event in collector.events:
            print(" ", json.dumps(event, sort_keys=True))
        print("\nstats:", json.dumps(client.odp_stats(), sort_keys=True))


if __name__ == "__main__":
    main()
