"""After a backlog drains, the memory it took goes back to the system, not only to the heap.

A child process queues ~24 MiB of 2 KB events while the collector (in this process, on
127.0.0.1) answers 503, then the collector recovers and the child flushes. glibc keeps most of
such a backlog in its heaps once freed (measured: 23-33 MiB of 32); the manager trims them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from optimizely_odp_ext.testing import OdpCollector

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, time
from optimizely_odp_ext import BatchEventManager, OdpOptimizely
from optimizely_odp_ext.testing import sample_datafile

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

url, key = sys.argv[1], sys.argv[2]
client = OdpOptimizely(datafile=json.dumps(sample_datafile(url, key)),
                       odp_event_manager=BatchEventManager(flush_interval=0.05, retry_initial_backoff=0.05,
                                                           retry_max_backoff=0.2))
data = [{f"field_{k}": f"{i}-{k}-" + "x" * 90 for k in range(18)} for i in range(100)]  # ~2 KB of JSON
client.send_odp_event("warmup", {"fs_user_id": "w"}, data=data[0])
assert client.flush(10)
print("WARM", flush=True)
sys.stdin.readline()  # the collector answers 503 from now
before = rss_kib()
for i in range(12_000):
    assert client.send_odp_event("backlog", {"fs_user_id": f"u{i}"}, data=data[i % 100])
backlog = client.odp_stats()["queued_bytes"]
at_backlog = rss_kib()
print("QUEUED", flush=True)
sys.stdin.readline()  # the collector answers 202 again
assert client.flush(60)
deadline = time.monotonic() + 10
after = rss_kib()
while after - before > (at_backlog - before) / 2 and time.monotonic() < deadline:
    time.sleep(0.05)
    after = rss_kib()
print(json.dumps({"backlog_mib": backlog / 2**20, "growth_mib": (at_backlog - before) / 1024,
                  "kept_mib": (after - before) / 1024, "delivered": client.odp_stats()["delivered"]}))
client.close()
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_memory_of_a_drained_backlog_goes_back_to_the_system() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with OdpCollector(record=False) as collector:
        child = subprocess.Popen([sys.executable, "-c", CHILD, collector.url, str(collector.api_key)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            for expected, change in (("WARM", lambda: collector.respond_with(503)), ("QUEUED", collector.reset_faults)):
                assert child.stdout.readline().strip() == expected, child.stderr.read() if child.stderr else ""
                change()
                child.stdin.write("go\n")
                child.stdin.flush()
            out, err = child.communicate(timeout=90)
        finally:
            child.kill()
        delivered = collector.event_count()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["delivered"] == delivered == 12_001
    assert report["backlog_mib"] > 20 and report["growth_mib"] > 20, report
    assert report["kept_mib"] < report["growth_mib"] / 2, f"the backlog's memory stayed in the process: {report}"
