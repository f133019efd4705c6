"""Fixtures of the skeleton transport's tests. The transport (samples/skeleton_transport) is a
template to copy, never installed by the project's nox sessions: its source tree goes on
``sys.path`` here, and buses are built from ``SkeletonTransport.from_url``, not the entry point."""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "samples" / "skeleton_transport" / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@pytest.fixture
def skeleton_url(tmp_path: Path) -> str:
    """A fresh broker file for the test; polled every 10 ms so that the kit waits little."""
    return f"skeleton://{urllib.parse.quote(str(tmp_path / 'broker.db'))}?poll_interval=0.01"
