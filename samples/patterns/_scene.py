"""What every pattern sample shares: its command line, the names it uses, its printing."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Checks", "namespaced", "run_cli", "say"]


def say(service: str, text: str) -> None:
    """Print one line of the scene, labelled with the service that speaks."""
    print(f"{service:<10} | {text}", flush=True)


def namespaced(url: str, namespace: str | None) -> Callable[[str], str]:
    """The function that names this run's topics and queues.

    ``namespace`` given: ``"<namespace>.<name>"`` (``""``: the plain names). ``None``: plain
    names on ``memory://`` (a fresh broker per process), else a fresh ``p<hex>`` prefix so a
    run on a shared broker never meets what an earlier run left in its queues.
    """
    if namespace is None:
        namespace = "" if url.startswith("memory:") else f"p{uuid.uuid4().hex[:8]}"
    if not namespace:
        return lambda name: name
    return lambda name: f"{namespace}.{name}"


class Checks:
    """The promises a scene checks; :meth:`result` prints the broken ones and gives the
    exit code (0: all kept)."""

    def __init__(self) -> None:
        self.broken: list[str] = []

    def expect(self, ok: bool, promise: str) -> None:
        """Record ``promise`` as broken unless ``ok``."""
        if not ok:
            self.broken.append(promise)

    def result(self) -> int:
        for promise in self.broken:
            print(f"FAILED: {promise}", flush=True)
        if not self.broken:
            print("OK: every promise of the pattern kept", flush=True)
        return 1 if self.broken else 0


def run_cli(main: Callable[[str], Coroutine[Any, Any, int]], doc: str | None) -> None:
    """``python -m samples.patterns.<name> [URL]``: run ``main`` on URL (default
    ``MESSAGEBUS_URL``, else ``memory://``) and exit with its code."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("MESSAGEBUS_URL") or "memory://",
        help="transport URL (default: $MESSAGEBUS_URL, else memory://)",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.url)))
