"""How fast ``optimizely-odp import`` sends a backfill, against the project's collector on 127.0.0.1.

Run by hand (not in CI), from the repository root::

    PYTHONPATH=. python benchmarks/import_rate.py               # 100,000 rows, 0 and 50 ms (~1 minute)
    PYTHONPATH=. python benchmarks/import_rate.py --rows 20000  # quicker

For each scenario the parent process runs one :class:`OdpCollector` (``record=False``, the
added latency set with ``set_delay``) and the import runs as the command a user types
(``python -m optimizely_odp_ext.cli import FILE --host URL --api-key KEY``) in its own
process, so the two do not share a GIL. The input is written once per format (JSON lines,
and CSV with ``id.``/``data.`` columns); each run starts without a checkpoint.

Reported per scenario: the wall time of the whole command (interpreter start, hashing the
file, sending, the last checkpoint), events/s over that wall time, the rate the command
itself reports (rows resolved per second while sending), requests, and that every row
arrived exactly once (the collector counts events; the run fails otherwise).
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimizely_odp_ext import __version__  # noqa: E402
from optimizely_odp_ext.compat import SDK_VERSION  # noqa: E402
from optimizely_odp_ext.testing import OdpCollector  # noqa: E402

API_KEY = "benchmark-key"
REPORTED_RATE = re.compile(r"\(([\d.]+)s, ([\d,]+) events/s\)")


@dataclass
class Result:
    format: str
    latency_ms: int
    in_flight: int
    rows: int
    delivered: int
    requests: int
    wall_s: float
    reported_rate: int
    cpu_s: float
    """User + system CPU seconds of the import process."""

    @property
    def wall_rate(self) -> float:
        return self.delivered / self.wall_s


def write_inputs(directory: Path, rows: int) -> dict[str, Path]:
    """The same rows as JSON lines and as CSV."""
    jsonl, table = directory / "events.jsonl", directory / "events.csv"
    with open(jsonl, "w") as lines, open(table, "w", newline="") as sheet:
        writer = csv.writer(sheet)
        writer.writerow(["action", "id.fs_user_id", "id.email", "data.order_id", "data.price", "data.currency"])
        for n in range(rows):
            user, price = f"user-{n % 5000}", round(5 + (n % 97) * 1.25, 2)
            lines.write(json.dumps({"action": "purchase", "identifiers": {"fs_user_id": user,
                                                                         "email": f"{user}@example.com"},
                                    "data": {"order_id": f"order-{n}", "price": price, "currency": "EUR"}}) + "\n")
            writer.writerow(["purchase", user, f"{user}@example.com", f"order-{n}", price, "EUR"])
    return {"jsonl": jsonl, "csv": table}


def run_one(path: Path, fmt: str, latency_ms: int, in_flight: int, rows: int, timeout: float) -> Result:
    for leftover in path.parent.glob(path.name + ".odp-import*"):
        leftover.unlink()
    with OdpCollector(api_key=API_KEY, record=False) as collector:
        collector.set_delay(latency_ms / 1000)
        command = [sys.executable, "-m", "optimizely_odp_ext.cli", "import", str(path), "--host", collector.url,
                   "--api-key", API_KEY, "--in-flight", str(in_flight), "--progress-interval", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMIZELY_ODP_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        delivered, requests = collector.event_count(), collector.request_count()
    if done.returncode != 0 or delivered != rows:
        raise SystemExit(f"{fmt} {latency_ms} ms: exit {done.returncode}, {delivered:,} of {rows:,} delivered\n"
                         f"{done.stdout}{done.stderr}")
    found = REPORTED_RATE.search(done.stdout)
    reported = int(found.group(2).replace(",", "")) if found else 0
    return Result(fmt, latency_ms, in_flight, rows, delivered, requests, wall, reported, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the file (default %(default)s)")
    parser.add_argument("--latencies", type=int, nargs="+", default=[0, 50], metavar="MS",
                        help="added latency of the collector per request (default 0 50)")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4, 8], metavar="N",
                        help="--in-flight values to try (default 4, the default, and 8)")
    parser.add_argument("--formats", nargs="+", choices=("jsonl", "csv"), default=["jsonl", "csv"])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one import may take")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="odp-import-bench-") as directory:
        inputs = write_inputs(Path(directory), args.rows)
        sizes = {fmt: inputs[fmt].stat().st_size for fmt in inputs}
        for latency in args.latencies:
            for in_flight in args.in_flight:
                for fmt in args.formats:
                    result = run_one(inputs[fmt], fmt, latency, in_flight, args.rows, args.timeout)
                    results.append(result)
                    print(f"  {fmt:5} {latency:3} ms, {in_flight} in flight: {result.wall_rate:,.0f} events/s "
                          f"(wall {result.wall_s:.1f}s)", file=sys.stderr, flush=True)

    print("# optimizely-odp import: backfill rate\n")
    print(f"- Date: {time.strftime('%Y-%m-%d')}; machine: {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"- Python {platform.python_version()}, optimizely-sdk {SDK_VERSION}, optimizely-odp-ext {__version__}")
    command = " ".join(["PYTHONPATH=. python benchmarks/import_rate.py", *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"- Command: `{command}`; load average at the end: {load}")
    print(f"- Input: {args.rows:,} rows (JSON lines {sizes['jsonl'] / 1e6:.1f} MB, CSV {sizes['csv'] / 1e6:.1f} MB), "
          f"batches of 500; whole run {time.perf_counter() - started:.0f} s")
    print("- Every row arrived exactly once in every run (the collector's count; the script fails otherwise).")
    print("- CPU s of the import process per 10k rows is the figure least moved by other load on the machine: "
          "10 / it is the rate one free core would sustain.\n")
    print("| format | added latency | in flight | wall s | events/s (wall) | events/s (while sending) | "
          "CPU s per 10k rows | requests |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r.format} | {r.latency_ms} ms | {r.in_flight} | {r.wall_s:.1f} | {r.wall_rate:,.0f} | "
              f"{r.reported_rate:,} | {r.cpu_s * 10_000 / r.rows:.2f} | {r.requests:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
