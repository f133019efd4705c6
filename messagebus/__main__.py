"""The ``messagebus`` command.

messagebus run myservice.app:bus [--grace 30]   # start the Bus, run until SIGINT/SIGTERM
messagebus check amqp://guest:guest@localhost/  # validate a URL (no I/O); password redacted
messagebus schemes                              # the installed transports
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from ._bus import Bus
from ._config import TransportURL
from ._discovery import available_schemes, load_transport
from ._errors import MessageBusError

__all__ = ["main"]


def _load_bus(spec: str) -> Bus:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"error: expected MODULE:ATTRIBUTE (e.g. myservice.app:bus), got {spec!r}")
    sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    obj = getattr(module, attr, None)
    if callable(obj) and not isinstance(obj, Bus):
        obj = obj()
    if not isinstance(obj, Bus):
        raise SystemExit(f"error: {spec} is {type(obj).__name__}, not a messagebus.Bus (or a function returning one)")
    return obj


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``messagebus`` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="messagebus", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a service's Bus until SIGINT/SIGTERM")
    run.add_argument("bus", help="MODULE:ATTRIBUTE of a Bus, or of a function returning one")
    run.add_argument("--grace", type=float, default=30.0, help="seconds in-flight handlers get on shutdown")
    run.add_argument("--log-level", default="INFO")
    check = commands.add_parser("check", help="validate a transport URL and its options (no I/O)")
    check.add_argument("url")
    commands.add_parser("schemes", help="list the installed transports")
    args = parser.parse_args(argv)
    try:
        if args.command == "schemes":
            print("\n".join(available_schemes()))
        elif args.command == "check":
            url = TransportURL.parse(args.url)
            transport = load_transport(url)
            print(f"ok: {url} -> {type(transport).__module__}.{type(transport).__qualname__}")
        else:
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            bus = _load_bus(args.bus)
            asyncio.run(bus.run(grace=args.grace))
    except MessageBusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
