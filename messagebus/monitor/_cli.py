"""``messagebus monitor URL``: the command-line face of :class:`~messagebus.monitor.Monitor`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .._stop_signals import stop_on_signals

__all__ = ["add_parser", "run"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 0 (any free one) to 65535, got {text!r}")
    return int(text)


def add_parser(commands: Any) -> None:
    """Add the ``monitor`` command to the ``messagebus`` command's subparsers."""
    monitor = commands.add_parser(
        "monitor",
        help="serve a live web page of the message flow between services",
        description="Listen to the stats every Bus publishes on messagebus.stats (with a throwaway group, "
        "deleted on exit), read queue and dead-letter depths from the broker, and serve a page showing which "
        "services publish and handle which topics and queues, rates, in-flight counts, handler times and "
        "dead letters (peek, replay, purge). Replay and purge need the token printed at start; the printed "
        "address carries it. Needs the monitor extra: pip install 'messagebus-sdk[monitor]'. Stops on "
        "SIGINT/SIGTERM.",
    )
    monitor.add_argument("url", help="the services' transport URL, e.g. amqp://guest:guest@localhost:5672/")
    monitor.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; another one exposes the page)"
    )
    monitor.add_argument("--port", type=_port, default=8765, help="default: 8765; 0 picks a free port")
    monitor.add_argument("--depth-interval", type=_seconds, default=5.0, help="seconds between depth reads (default 5)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``monitor`` command until SIGINT/SIGTERM; returns the exit status (2
    when the extra is missing or the port is taken). Raises
    :class:`~messagebus.MessageBusError` for a bad URL or an unreachable broker."""
    try:
        from ._app import Monitor
    except ImportError as exc:
        print(f"error: the monitor needs its extra: pip install 'messagebus-sdk[monitor]' ({exc})", file=sys.stderr)
        return 2

    async def serve() -> int:
        monitor = Monitor(args.url, host=args.host, port=args.port, depth_interval=args.depth_interval)
        try:
            await monitor.start()
        except OSError as exc:
            print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        try:
            with stop_on_signals(stop):
                print(f"monitoring {monitor.url} (group {monitor.group} on messagebus.stats)")
                print(f"open {monitor.page_url}")
                print(f"token for replay and purge: {monitor.token}", flush=True)
                await stop.wait()
        finally:
            await monitor.stop()
        return 0

    return asyncio.run(serve())
