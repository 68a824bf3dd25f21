"""Handing the allocator's free memory back to the system once a backlog has drained.

Events of a few KB are freed into glibc's heaps, which keep the memory for the process:
measured (``benchmarks/memory.py``), 23-33 MiB of a 32 MiB backlog of 2 KB events stayed in
the process after it was delivered. ``malloc_trim(0)`` hands it back. Where the C library has
no ``malloc_trim`` (musl, macOS, Windows) nothing is done.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from optimizely_odp_ext.settings import MiB

TRIM_AFTER = 8 * MiB
"""``queued_bytes`` a backlog must have reached for its drain to be followed by a trim."""


def give_back() -> bool:
    """Return free heap memory to the system (glibc's ``malloc_trim(0)``; the GIL is released
    meanwhile). False where there is no such call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # only here: a process whose backlogs never grow does not load it

        function = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except Exception:  # not glibc (AttributeError), or a Python without ctypes: nothing to do
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function
