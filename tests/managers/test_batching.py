"""Cutting waiting events into batches: the pure data structures, without threads or I/O."""

from __future__ import annotations

import random

from optimizely_odp_ext import encoding
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.managers.batching import WAITING_OVERHEAD, Destination, seal, waiting_memory


def test_a_batch_is_the_longest_run_of_waiting_events_that_fits() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        waiting = [(seq, rng.random(), b"x" * rng.randint(1, 60), rng.choice((0, 0, seq + 1)))
                   for seq in range(rng.randint(1, 30))]
        batch_size, max_bytes = rng.randint(1, 40), rng.randint(1, 500)
        destination = Destination(OdpIntegration("http://127.0.0.1:9", "key"))
        destination.waiting = list(waiting)
        taken = destination.take_batch(batch_size, max_bytes)
        count = len(taken)
        bodies = [item[2] for item in waiting]
        assert taken == waiting[:count] and destination.waiting == waiting[count:]
        assert 1 <= count <= batch_size
        # Each event is counted with its ", ": the body is at most max_bytes - 2, one event always goes.
        assert count == 1 or len(encoding.join(bodies[:count])) + 2 <= max_bytes
        if count < min(batch_size, len(waiting)):  # the next one would not have fitted
            assert len(encoding.join(bodies[:count + 1])) + 2 > max_bytes

        batch = seal(destination.integration, taken)
        assert batch.parts == bodies[:count] and batch.count == count
        assert batch.min_seq == taken[0][0] and batch.oldest == min(item[1] for item in taken)
        spool_ids = [item[3] for item in taken]
        assert batch.spool_ids == (spool_ids if any(spool_ids) else None)
        assert waiting_memory(taken) == sum(map(len, bodies[:count])) + WAITING_OVERHEAD * count
