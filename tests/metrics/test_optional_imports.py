"""Each exporter imports its library only itself, and says in one line what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_the_package_and_the_metrics_package_import_no_metrics_library() -> None:
    done = run("""
        import sys
        import optimizely_odp_ext, optimizely_odp_ext.metrics, optimizely_odp_ext.metrics.schema
        from optimizely_odp_ext import OdpOptimizely
        loaded = [m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry")]
        print(loaded)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "library", "extra"), [
    ("optimizely_odp_ext.metrics.prometheus", "prometheus_client", "prometheus"),
    ("optimizely_odp_ext.metrics.otel", "opentelemetry", "otel"),
])
def test_a_missing_library_fails_with_one_line_naming_the_extra(module: str, library: str, extra: str) -> None:
    done = run(f"""
        import sys
        sys.modules[{library!r}] = None  # as if it were not installed
        try:
            import {module}
        except ImportError as error:
            print(error)
    """)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert len(message.splitlines()) == 1
    assert f"pip install 'optimizely-odp-ext[{extra}]'" in message and module in message
