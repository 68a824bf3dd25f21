"""Memory an event takes while it waits unencoded, beyond its JSON (for ``max_queue_bytes``).

Builds events as an application does (fresh dicts and strings each call), keeps only what the
manager keeps (:func:`~optimizely_odp_ext.managers.batching.queued`), and measures it with
``tracemalloc``. The manager counts such an event at its JSON estimate + ``OBJECT_OVERHEAD`` +
``PER_FIELD_OVERHEAD`` per field: the last column shows that count over what was measured
(≥ 1.0: the cap holds).

    python benchmarks/object_overhead.py
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

from optimizely_odp_ext import encoding
from optimizely_odp_ext.event import OdpEvent, build_event
from optimizely_odp_ext.managers.batching import OBJECT_OVERHEAD, PER_FIELD_OVERHEAD, Queued, queued


def make_event(i: int, fields: int) -> OdpEvent:
    data = {f"field_{k}": (f"value-{i}-{k}" if k % 3 == 0 else i * k if k % 3 == 1 else i / 7.0)
            for k in range(fields)}
    return build_event("bench", {"fs_user_id": f"user-{i}"}, "fullstack", data)


def measure(fields: int, events: int) -> tuple[float, float]:
    """(bytes held per event, JSON bytes per event)."""
    keep: list[Queued] = []
    json_bytes = 0
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for i in range(events):
        event = make_event(i, fields)
        json_bytes += len(encoding.encode(event.to_dict()))
        keep.append(queued(i, event, 0))
        del event
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - start - sys.getsizeof(keep)
    tracemalloc.stop()
    return held / events, json_bytes / events


def main() -> int:
    print("| fields | held B/event | JSON B/event | beyond the JSON | counted beyond the JSON | counted / held |")
    print("| --- | --- | --- | --- | --- | --- |")
    for data_fields in (2, 6, 30, 300):
        held, json_size = measure(data_fields, 20_000 if data_fields < 100 else 2_000)
        fields = data_fields + 1  # and one identifier
        counted = OBJECT_OVERHEAD + PER_FIELD_OVERHEAD * fields
        print(f"| {fields} | {held:,.0f} | {json_size:,.0f} | {held - json_size:,.0f} | {counted:,} | "
              f"{(json_size + counted) / held:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
