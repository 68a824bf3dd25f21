"""Memory an event takes while it waits, beyond its JSON (for ``max_queue_bytes``).

Builds and encodes events as the manager does when they are accepted, keeps only what the
manager keeps, and measures it with ``tracemalloc``:

- waiting for its batch: the :data:`~optimizely_odp_ext.managers.batching.Waiting` tuple (order,
  time, bytes, spool id) in a list, counted at its JSON size + ``WAITING_OVERHEAD``;
- in a batch (cut, waiting for a retry): its bytes in the batch's list, and its spool id,
  counted at its JSON size + 2 + ``PART_OVERHEAD``.

The last column shows that count over what was measured (≥ 1.0: the cap holds).

    python benchmarks/object_overhead.py
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc

from optimizely_odp_ext.event import build_event
from optimizely_odp_ext.managers.batching import PART_OVERHEAD, WAITING_OVERHEAD


def measure(fields: int, events: int, in_batch: bool) -> tuple[float, float]:
    """(bytes held per event, JSON bytes per event)."""
    keep: list[object] = []
    spool_ids: list[int] = []
    json_bytes = 0
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for i in range(events):
        data = {f"field_{k}": (f"value-{i}-{k}" if k % 3 == 0 else i * k if k % 3 == 1 else i / 7.0)
                for k in range(fields)}
        event = build_event("bench", {"fs_user_id": f"user-{i}"}, "fullstack", data)
        body = event.to_json()
        json_bytes += len(body)
        if in_batch:
            keep.append(body)
            spool_ids.append(i + 10**6)
        else:
            keep.append((i + 1000, time.monotonic(), body, 0))
        del event, data, body
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return held / events, json_bytes / events


def main() -> int:
    print("| where | fields | held B/event | JSON B/event | beyond the JSON | counted beyond the JSON "
          "| counted / held |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for in_batch, counted in ((False, WAITING_OVERHEAD), (True, 2 + PART_OVERHEAD)):
        for data_fields in (0, 6, 30, 300):
            held, json_size = measure(data_fields, 20_000 if data_fields < 100 else 2_000, in_batch)
            fields = data_fields + 1  # and one identifier
            print(f"| {'in a batch' if in_batch else 'waiting'} | {fields} | {held:,.0f} | {json_size:,.0f} | "
                  f"{held - json_size:,.0f} | {counted:,} | {(json_size + counted) / held:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
