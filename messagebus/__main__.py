"""The ``messagebus`` command: run a service's Bus, validate a transport URL, list transports,
print the broker names of a destination for clients that do not use messagebus.

Its help text is plain text (argparse prints it as written), so it carries no reST markup.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from . import _asyncapi as asyncapi_cli
from . import _compat as schema_cli
from . import _ops_cli as ops_cli
from ._bus import Bus
from ._config import TransportURL
from ._destination import Destination, DestinationKind, dead_letter_name, validate_name
from ._discovery import available_schemes, load_transport
from ._errors import MessageBusError
from ._transport import Transport
from .monitor import _cli as monitor_cli
from .outbox import _cli as outbox_cli

__all__ = ["main"]

_DESCRIPTION = (
    "Run a messagebus service, validate a transport URL, list the installed transports, print the broker "
    "names a client that does not use messagebus must use."
)
_EXAMPLES = """\
examples:
  messagebus run myservice.app:bus --grace 30     start the Bus, run until SIGINT/SIGTERM
  messagebus check amqp://guest:guest@localhost/  validate a URL and its options (no I/O)
  messagebus schemes                              list the installed transports
  messagebus names kafka://localhost:9092 orders.created billing
                                                  the Kafka topic, group id, retry and dead-letter
                                                  topics behind group billing (no I/O)
  messagebus dlq list amqp://guest:guest@localhost/
                                                  every dead-letter queue with its depth
  messagebus dlq show amqp://localhost/ orders.created.billing.dlq --limit 5
  messagebus dlq replay amqp://localhost/ orders.created.billing.dlq --id 3f2a...
                                                  back to group billing only, as a first attempt
  messagebus dlq purge amqp://localhost/ orders.created.billing.dlq --yes
  messagebus tail kafka://localhost:9092 orders.created
                                                  print messages as they pass (a throwaway group)
  messagebus publish redis://localhost orders.created '{"id": 1}' --key 1 --header region=eu
  messagebus monitor amqp://guest:guest@localhost/
                                                  a live web page of the message flow on 127.0.0.1:8765
  messagebus outbox migrate postgresql://localhost/app
                                                  create or upgrade the outbox/inbox tables
  messagebus schema check shop.v1:Order shop.events:Order --mode full
                                                  is the model change compatible? exit 1 if not
  messagebus asyncapi myservice.app:bus -o asyncapi.yaml
                                                  the service's AsyncAPI 3.0 document (no I/O)

The transport URL of 'run' comes from the Bus itself (Bus.from_env reads MESSAGEBUS_URL).
Exit status: 0 on success, 1 when 'dlq replay --id' did not find every id or 'schema check' found
a breaking change, 2 on a usage or configuration error (also a broker that cannot be reached)."""


_UsageError = ops_cli.UsageError


def _buses_in(module: ModuleType) -> list[str]:
    return sorted(name for name, value in vars(module).items() if isinstance(value, Bus))


def _no_bus_hint(module: ModuleType) -> str:
    names = _buses_in(module)
    if not names:
        return f"module {module.__name__!r} defines no messagebus.Bus at module level"
    return f"Bus objects in {module.__name__!r}: " + ", ".join(f"{module.__name__}:{n}" for n in names)


def _import(module_name: str) -> ModuleType:
    if "" not in sys.path:
        # Like `python -m`: a service module in the current directory is found without PYTHONPATH.
        sys.path.insert(0, "")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise _UsageError(
                f"no module named {missing!r} (looked in the current directory and on sys.path); "
                f"run from the directory that contains it or add that directory to PYTHONPATH"
            ) from None
        # The module exists but something it imports does not: that is the module's own error.
        raise _UsageError(f"importing {module_name!r} failed: {exc}") from exc


def _load_bus(spec: str) -> Bus:
    """The Bus named by ``MODULE:ATTRIBUTE``: a Bus, or a function called with no arguments
    that returns one. Raises :class:`_UsageError` saying what was found instead."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise _UsageError(f"expected MODULE:ATTRIBUTE (e.g. myservice.app:bus), got {spec!r}")
    module = _import(module_name)
    if not hasattr(module, attr):
        raise _UsageError(f"module {module_name!r} has no attribute {attr!r}; {_no_bus_hint(module)}")
    obj = getattr(module, attr)
    if isinstance(obj, Bus):
        return obj
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise _UsageError(
                f"{spec} is a function that needs arguments; expected a Bus or a function callable "
                f"with no arguments that returns one; {_no_bus_hint(module)}"
            ) from None
        result = obj()
        if isinstance(result, Bus):
            return result
        raise _UsageError(f"{spec}() returned {type(result).__name__}, not a messagebus.Bus; {_no_bus_hint(module)}")
    raise _UsageError(
        f"{spec} is {type(obj).__name__}, not a messagebus.Bus (or a function returning one); {_no_bus_hint(module)}"
    )


PhysicalNames = Callable[[Destination, Any], Mapping[str, str]]


def _physical_names_of(transport: Transport) -> PhysicalNames | None:
    """The adapter's public ``physical_names(destination, options=None)``: a function of the
    package that defines the transport class (``messagebus_sqs.physical_names``)."""
    package = sys.modules.get(type(transport).__module__.partition(".")[0])
    function = getattr(package, "physical_names", None)
    return function if callable(function) else None


def _print_names(url: TransportURL, name: str, group: str | None) -> None:
    """Print the physical names behind ``name`` (a topic with ``group``, else both the topic
    one publishes to and the queue of that name) and the limits a foreign client must keep.
    No I/O: names are computed as the transport computes them."""
    validate_name(name, "destination")
    if group is not None:
        validate_name(group, "group")
    transport = load_transport(url)
    physical = _physical_names_of(transport)
    options = getattr(transport, "options", None)
    print(f"transport: {type(transport).__module__}.{type(transport).__qualname__} ({url})")
    if physical is None:
        print("  (no physical_names function: this transport uses the logical names as they are)")
    if group is not None:
        roles = [(Destination(DestinationKind.TOPIC, name, group), f"topic {name!r} group {group!r} (subscribe)")]
    else:
        roles = [
            (Destination(DestinationKind.TOPIC, name), f"topic {name!r} (publish)"),
            (Destination(DestinationKind.QUEUE, name), f"queue {name!r} (send and consume)"),
        ]
    for destination, title in roles:
        if physical is not None:
            names = dict(physical(destination, options))
        else:
            names = {destination.kind.value: name}
            if destination.kind is DestinationKind.QUEUE or group is not None:
                names["dead_letter"] = dead_letter_name(name, group)
        print(f"{title}:")
        width = max(map(len, names))
        for role, value in names.items():
            print(f"  {role:<{width}}  {value}")
    caps = transport.capabilities
    print(f"limits: bodies up to {caps.max_message_size} bytes; per-key order: {'yes' if caps.ordering else 'no'}")
    print("headers: CloudEvents binary mode of this broker's binding; see docs/interop.md")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``messagebus`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="messagebus",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run a service's Bus until SIGINT/SIGTERM",
        description="Start the Bus named by MODULE:ATTRIBUTE and run it until SIGINT or SIGTERM, then stop "
        "gracefully: no new messages, in-flight handlers get the grace period and are acked.",
    )
    run.add_argument("bus", help="MODULE:ATTRIBUTE of a Bus, or of a function returning one")
    run.add_argument("--grace", type=float, default=30.0, help="seconds in-flight handlers get on shutdown")
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: INFO",
    )
    check = commands.add_parser(
        "check",
        help="validate a transport URL and its options (no I/O)",
        description="Parse a transport URL and validate its options with the installed transport, without "
        "connecting. Prints the URL with its password redacted and the transport class.",
    )
    check.add_argument("url", help="a transport URL such as amqp://guest:guest@localhost:5672/ (password redacted)")
    commands.add_parser(
        "schemes", help="list the installed transports", description="List the URL schemes of the installed transports."
    )
    names = commands.add_parser(
        "names",
        help="print the broker names behind a destination (no I/O)",
        description="Print the physical names (topics, queues, subscriptions, consumer groups, retry and "
        "dead-letter destinations) the transport of URL uses for DESTINATION, as a client that does not use "
        "messagebus must name them, and the limits it must keep. With GROUP: the subscription of that group "
        "to topic DESTINATION; without: the topic DESTINATION and the queue DESTINATION. Uses the adapter's "
        "physical_names function and the URL's options (prefixes, FIFO ...); connects to nothing.",
    )
    names.add_argument("url", help="a transport URL, as the services use it (its options can change names)")
    names.add_argument("destination", help="a logical topic or queue name, such as orders.created")
    names.add_argument("group", nargs="?", help="a subscription group (the service name by default in code)")
    outbox_cli.add_parser(commands)
    ops_cli.add_parsers(commands)
    monitor_cli.add_parser(commands)
    schema_cli.add_parser(commands)
    asyncapi_cli.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "schemes":
            print("\n".join(available_schemes()))
        elif args.command in ("dlq", "tail", "publish", "replay"):
            return ops_cli.run(args)
        elif args.command == "monitor":
            return monitor_cli.run(args)
        elif args.command == "schema":
            return schema_cli.run(args)
        elif args.command == "asyncapi":
            return asyncapi_cli.run(args, _load_bus, _UsageError)
        elif args.command == "outbox":
            print(outbox_cli.run(args))
        elif args.command == "names":
            _print_names(TransportURL.parse(args.url), args.destination, args.group)
        elif args.command == "check":
            url = TransportURL.parse(args.url)
            transport = load_transport(url)
            print(f"ok: {url} -> {type(transport).__module__}.{type(transport).__qualname__}")
        else:
            logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            bus = _load_bus(args.bus)
            asyncio.run(bus.run(grace=args.grace))
    except (MessageBusError, _UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
