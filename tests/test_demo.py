"""The README's first command: ``nox -s demo`` runs the shop with ``--trace``.

The demo session installs the package and the OpenTelemetry SDK, not pytest, so the demo
runs here in a subprocess where pytest cannot be imported.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Makes 'import pytest' fail in the child, as in the demo's nox venv that has no pytest.
NO_PYTEST = """
import runpy, sys
sys.modules["pytest"] = None
sys.modules["_pytest"] = None
sys.argv = ["samples.shop", *sys.argv[1:]]
runpy.run_module("samples.shop", run_name="__main__", alter_sys=True)
"""


def test_demo_with_trace_runs_without_pytest() -> None:
    """Bug caught: ``nox -s demo`` failed on a fresh clone with a wrong 'needs the
    OpenTelemetry SDK' hint: messagebus.testing imported pytest, which the demo lacks."""
    done = subprocess.run(
        [sys.executable, "-c", NO_PYTEST, "--trace", "--url", "memory://demo-test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "needs the OpenTelemetry SDK" not in done.stderr
    assert "The trace of order-3" in done.stdout, done.stdout
    assert "5 shipped, 1 payment failed" in done.stdout
