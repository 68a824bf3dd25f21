"""What every benchmark shares: paths, event shapes, client processes, the collector, the readers
of RSS and CPU, statistics, formatting, and the sections of RESULTS.md.

The benchmarks are run by hand (not in CI): ``python benchmarks/run.py`` runs the issue 10 set.
Every client runs in a process of its own (``python benchmarks/clients.py SPEC``, or the child mode
of a scenario file), so its CPU and RSS are its own; the collector (:class:`OdpCollector`, which
sets TCP_NODELAY on its keep-alive connections) runs in the parent process, on 127.0.0.1 only.
"""

# ruff: noqa: RUF001  (the reports use the multiplication and minus signs on purpose)
from __future__ import annotations

import json
import os
import platform
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
PACKAGE_VARIABLE = "ODP_BENCH_PACKAGE"
"""A directory holding another ``optimizely_odp_ext`` (the previous release) to import instead."""
if os.environ.get(PACKAGE_VARIABLE):
    sys.path.insert(0, os.environ[PACKAGE_VARIABLE])

API_KEY = "k"
PREVIOUS_COMMIT = "d3a639d"
"""The last commit before the delivery rewrite (issue 10): "ours-0.1.0" runs this code."""
LABELS = {
    "official": "official optimizely-sdk",
    "ours": "OdpOptimizely",
    "ours-json": "OdpOptimizely, stdlib json",
    "ours-ujson": "OdpOptimizely, [fast] ujson",
    "ours-0.1.0": f"OdpOptimizely 0.1.0 ({PREVIOUS_COMMIT})",
    "floor": "floor",
    "null": "no-op send (the harness alone)",
    "encode": "encode-only send (`json.dumps` of the event)",
}
MiB = 1024 * 1024

# ============================================================================ event shapes

SIZES = {"small": 100, "2k": 2000, "20k": 20000}
"""Bytes of JSON of the caller's ``data`` in each event size (the whole event adds ~250 B:
identifiers and the default data)."""
SIZE_LABELS = {"small": "~100 B", "2k": "2 KB", "20k": "20 KB"}


def event_data(size: str, i: int) -> dict[str, Any]:
    """The ``data`` of event ``i``: about ``SIZES[size]`` bytes of JSON, a realistic mix of
    strings, integers, floats and booleans (one field in four is a number or a boolean)."""
    if size == "small":
        return {"n": i, "plan": "pro", "sku": f"sku-{i % 1000}", "price": 12.5, "currency": "EUR",
                "page": "/checkout"}
    target = SIZES[size]
    data: dict[str, Any] = {"n": i}
    length = 10
    k = 0
    while length < target:
        key = f"attr_{k:03d}"
        kind = k % 8
        value: Any
        if kind == 3:
            value = i * 31 + k
        elif kind == 5:
            value = (i % 997) * 0.25 + k
        elif kind == 7:
            value = k % 3 == 0
        else:
            value = f"{key} of item {i % 5000}: lorem ipsum dolor sit"
        data[key] = value
        length += len(json.dumps(key)) + len(json.dumps(value)) + 4
        k += 1
    return data


def data_pool(size: str, count: int) -> list[dict[str, Any]]:
    """Distinct ``data`` dicts that event ``i`` cycles through (``pool[i % len(pool)]``): every call
    builds and encodes a whole event, without the harness holding one dict per event."""
    pool_size = max(16, min(count, 1000, 8 * MiB // (SIZES[size] * 3)))
    return [event_data(size, i) for i in range(pool_size)]


# ============================================================================ statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of already sorted values; 0 when empty."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def median(values: Sequence[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    middle = len(present) // 2
    return present[middle] if len(present) % 2 else (present[middle - 1] + present[middle]) / 2


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired_ratio(mine: Sequence[float | None], theirs: Sequence[float | None]) -> float | None:
    """The median of ``mine[i] / theirs[i]``: each measurement over the one taken beside it, so that
    a change in the machine's speed between pairs hits both sides of a ratio."""
    return median([ratio(a, b) for a, b in zip(mine, theirs)])


# ============================================================================ process readers


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_s(tid: int) -> float:
    """User + system CPU seconds of one thread of this process (from /proc, clock-tick resolution)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds of every live thread of this process, by thread name (summed per name)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        name = names.get(tid, "other")
        out[name] = out.get(name, 0.0) + thread_cpu_s(tid)
    return out


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


class GcTimer:
    """Times the garbage collector's passes through ``gc.callbacks`` (in the process it runs in)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = 0.0
        self.max_s = 0.0
        self.cpu_s = 0.0
        """CPU of the passes (the collecting thread's ``thread_time``: without the time the OS ran others)."""
        self.max_cpu_s = 0.0
        self._started = self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started, self._started_cpu = time.perf_counter(), time.thread_time()
            return
        took, cpu = time.perf_counter() - self._started, time.thread_time() - self._started_cpu
        self.count[info.get("generation", 0)] += 1
        self.total_s += took
        self.max_s = max(self.max_s, took)
        self.cpu_s += cpu
        self.max_cpu_s = max(self.max_cpu_s, cpu)

    def install(self) -> GcTimer:
        import gc

        gc.callbacks.append(self)
        return self

    def report(self) -> dict[str, Any]:
        return {"gc_counts": list(self.count), "gc_total_ms": self.total_s * 1000, "gc_max_ms": self.max_s * 1000,
                "gc_cpu_ms": self.cpu_s * 1000, "gc_max_cpu_ms": self.max_cpu_s * 1000}


# ============================================================================ machine and code


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("optimizely-odp-ext")
    except PackageNotFoundError:
        from optimizely_odp_ext import __version__ as ours
    try:
        fast = "ujson " + version("ujson")
    except PackageNotFoundError:
        fast = "not installed"
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "python": platform.python_version(),
        "optimizely_sdk": version("optimizely-sdk"),
        "optimizely_odp_ext": ours,
        "fast": fast,
        "platform": platform.platform(),
    }


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> str:
    """HEAD and whether the package has uncommitted changes (read-only git commands)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "optimizely_odp_ext")
    return f"git HEAD {head}" + (", with uncommitted changes in optimizely_odp_ext/" if dirty else ", clean")


def source_hash(package_root: Path = ROOT) -> str:
    """A short hash of every ``optimizely_odp_ext/**/*.py`` under ``package_root`` as it is on disk now."""
    import hashlib

    digest = hashlib.sha256()
    package = package_root / "optimizely_odp_ext"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def previous_package(commit: str = PREVIOUS_COMMIT) -> Path | None:
    """A directory holding ``optimizely_odp_ext`` as it was at ``commit`` (``git archive``, read-only
    for the repository), made once per commit under the temporary directory; None without git."""
    target = Path(tempfile.gettempdir()) / f"odp-bench-previous-{commit}"
    if (target / "optimizely_odp_ext" / "__init__.py").exists():
        return target
    try:
        archive = subprocess.run(["git", "archive", commit, "optimizely_odp_ext"], cwd=ROOT, capture_output=True,
                                 timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    partial = Path(tempfile.mkdtemp(prefix=f"odp-bench-previous-{commit}-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(partial, filter="data")
        else:
            tar.extractall(partial)
    with suppress(OSError):  # another run made it meanwhile
        partial.rename(target)
    return target if (target / "optimizely_odp_ext" / "__init__.py").exists() else None


# ============================================================================ client processes


class ChildProcess:
    """A benchmark child process: it says ``READY``, waits for ``GO`` on stdin, and ends with one
    ``RESULT {json}`` line; other lines it prints are kept (``NAME {json}``) or shown on stderr."""

    def __init__(self, script: str, spec: dict[str, Any], env: dict[str, str] | None = None,
                 package: Path | None = None) -> None:
        environment = dict(os.environ)
        environment.pop(PACKAGE_VARIABLE, None)
        environment.update(env or {})
        if package is not None:
            environment[PACKAGE_VARIABLE] = str(package)
        command = [sys.executable, str(HERE / script), "--child", json.dumps(spec)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=ROOT, env=environment)
        self.pid = self.process.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next line starting with ``prefix`` (other lines go to stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"child did not say {prefix} in {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"child exited (code {self.process.wait()}) before saying {prefix}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            print(f"    child: {line}", file=sys.stderr, flush=True)

    def expect_json(self, prefix: str, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.expect(prefix, timeout))
        return result

    def say(self, word: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(word + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def exited(self) -> bool:
        return self.process.poll() is not None

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def child_main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child side: ``script --child SPEC``; ``run(spec)`` says READY, waits for GO (see
    :func:`ready_and_wait`) and returns the result, printed as ``RESULT {json}``."""
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        raise SystemExit(f"usage: {sys.argv[0]} --child SPEC (started by the benchmarks)")
    spec = json.loads(sys.argv[2])
    url = spec.get("url", "http://127.0.0.1")
    if not url.startswith(("http://127.", "http://[::1]")):
        raise SystemExit("the benchmarks only talk to 127.0.0.1")
    result = run(spec)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # leftover threads or atexit hooks must not hold the exit


def ready_and_wait(info: dict[str, Any] | None = None) -> None:
    """Child side: say READY, then wait for GO on stdin (exit if the parent went away)."""
    print("READY " + json.dumps(info or {}), flush=True)
    if sys.stdin.readline().strip() != "GO":
        os._exit(2)


def say(word: str, payload: dict[str, Any]) -> None:
    """Child side: one ``WORD {json}`` line for the parent."""
    print(f"{word} " + json.dumps(payload), flush=True)


# ============================================================================ the collector


class Deliveries:
    """The collector's ``on_event`` hook: counts accepted events and keeps the ``time.time()`` of the
    first and last one since :meth:`reset`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def __call__(self, _event: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self.count += 1
            if not self.first:
                self.first = now
            self.last = now

    def reset(self) -> None:
        with self._lock:
            self.count, self.first, self.last = 0, 0.0, 0.0


@contextmanager
def collector(latency_ms: float = 0.0) -> Iterator[tuple[Any, Deliveries]]:
    """A fresh :class:`OdpCollector` on 127.0.0.1 (``record=False``, TCP_NODELAY on) that answers
    after ``latency_ms``, and its :class:`Deliveries`."""
    from optimizely_odp_ext.testing import OdpCollector

    deliveries = Deliveries()
    server = OdpCollector(api_key=API_KEY, record=False)
    server.on_event = deliveries
    with server:
        server.set_delay(latency_ms / 1000)
        yield server, deliveries


def wait_delivered(server: Any, deliveries: Deliveries, child: ChildProcess, expected: int | None,
                   timeout: float, settle: float = 0.3) -> bool:
    """After GO: until the child exited and ``expected`` events (or, None, no new one for ``settle``
    seconds) arrived; False when ``timeout`` ran out (the child is then killed)."""
    deadline = time.monotonic() + timeout
    count, changed_at = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = deliveries.count
        if now_count != count:
            count, changed_at = now_count, time.monotonic()
        if child.exited() and ((expected is not None and count >= expected)
                               or time.monotonic() - changed_at >= settle):
            return True
        time.sleep(0.01)
    child.cleanup()
    return False


# ============================================================================ the official client


def close_official(client: Any) -> bool:
    """Close the official client until its ODP queue is drained; True if close() returned early.

    With a full queue, the official close() cannot enqueue its shutdown signal: it logs "Error
    stopping ODP event queue" and returns while its thread still holds up to 1,000 events. Keep
    the process alive and stop again until it drains (as a long-lived app would), so the official
    is credited with everything it can deliver.
    """
    client.close()
    manager = client.odp_manager.event_manager
    returned_early = bool(manager.is_running)
    while manager.is_running:
        manager.stop()
        time.sleep(0.02)
    return returned_early


# ============================================================================ formatting


def fmt_int(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_us(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}×" if value < 10 else f"{value:,.0f}×"


def fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# ============================================================================ RESULTS.md sections
# RESULTS.md is shared: run.py owns what lies between <!-- bench:start --> and <!-- bench:end -->,
# the long runs (outage.py, spool_restart.py, soak.py) what lies between <!-- soak:start --> and
# <!-- soak:end -->, each scenario its own subsection there. Each replaces only its own.

_ANY_SECTION_START = re.compile(r"<!-- [\w-]+:start -->")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section_text(text: str, name: str) -> str | None:
    """What lies between the markers of section ``name`` in ``text`` (stripped), None if absent."""
    start, end = _markers(name)
    i = text.find(start)
    j = text.find(end, i + len(start)) if i != -1 else -1
    return None if j == -1 else text[i + len(start):j].strip("\n")


def replace_section(text: str, name: str, content: str, first: bool = False) -> str:
    """``text`` with section ``name`` holding ``content``; everything outside its markers is kept.
    A missing section is added at the end (at the top with ``first``)."""
    start, end = _markers(name)
    body = content.strip("\n")
    block = f"{start}\n{body}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i != -1 else -1
    if j != -1:
        return text[:i] + block + text[j + len(end):]
    if not text.strip():
        return block + "\n"
    return block + "\n\n" + text.lstrip("\n") if first else text.rstrip("\n") + "\n\n" + block + "\n"


def update_results_section(path: Path, name: str, make: Callable[[str | None], str], first: bool = False) -> None:
    """Replace section ``name`` of ``path`` with ``make(its current content or None)``, under an
    exclusive lock on the file (two scripts may write at once)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        if name == "bench" and section_text(text, name) is None:
            legacy = _ANY_SECTION_START.search(text)
            text = text[legacy.start():] if legacy else ""
        updated = replace_section(text, name, make(section_text(text, name)), first)
        handle.seek(0)
        handle.truncate()
        handle.write(updated)
