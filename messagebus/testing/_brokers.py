"""Helpers for test fixtures that start or find real brokers."""

from __future__ import annotations

import os
import socket
import time
from typing import NoReturn

import pytest

__all__ = ["brokers_required", "free_port", "missing_broker", "wait_for_port"]


def brokers_required() -> bool:
    """True in CI (``CI`` set) or with ``MESSAGEBUS_REQUIRE_BROKERS=1``: a missing broker fails."""
    return bool(os.environ.get("CI")) or os.environ.get("MESSAGEBUS_REQUIRE_BROKERS") == "1"


def missing_broker(name: str, reason: str) -> NoReturn:
    """Skip the test (normal machine) or fail it (CI) because broker ``name`` is unavailable."""
    message = f"{name} broker unavailable: {reason}"
    if brokers_required():
        pytest.fail(message + " (CI requires every broker; set MESSAGEBUS_TEST_<BROKER>_URL or install it)")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    """Poll until ``host:port`` accepts TCP connections; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.1)
    return False
