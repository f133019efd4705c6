"""The operator's commands of ``messagebus``: ``dlq list|show|replay|purge``, ``tail`` and
``publish``. Each opens a Bus of its own on the URL (service ``messagebus-cli``), does one
thing and stops it; errors reach the caller as :class:`MessageBusError` or :class:`UsageError`.

Everything printed from a message (body, headers, key) goes through :func:`printable`:
a payload must not be able to move the cursor or rewrite the operator's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from datetime import datetime
from typing import Any, Literal, TextIO

from ._bus import Bus
from ._dead_letters import admin_of, check_dead_letter_queue, origin
from ._destination import Destination, DestinationKind, validate_name
from ._discovery import load_transport
from ._history import parse_position
from ._message import Envelope
from ._stop_signals import stop_on_signals

__all__ = ["UsageError", "add_parsers", "printable", "render", "run"]

_SERVICE = "messagebus-cli"
#: Longest body shown by ``dlq show`` and ``tail`` before it is cut (``--full`` shows all).
_BODY_PREVIEW = 4096


class UsageError(Exception):
    """A mistake in the command line the user can fix; printed without a traceback, exit 2."""


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab shown as ``\\xNN`` (or
    ``\\uNNNN``): terminal escape sequences in a payload are shown, never obeyed."""
    return "".join(
        c if c in "\n\t" or (c.isprintable() and c not in "\x7f") else c.encode("unicode_escape").decode() for c in text
    )


def _body_text(body: bytes, full: bool) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes, not UTF-8) {body[:64].hex()}{'...' if len(body) > 64 else ''}"
    with contextlib.suppress(ValueError):  # not JSON: shown as the text it is
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    if not full and len(text) > _BODY_PREVIEW:
        text = text[:_BODY_PREVIEW] + f"\n... ({len(body)} bytes in all; --full shows everything)"
    return printable(text)


def render(envelope: Envelope, *, full: bool = False) -> str:
    """One message as the operator reads it: id, type, destination, key, attempt, every
    header (sorted), then the body (pretty JSON, else text, else a hex preview)."""
    lines = [
        f"id: {printable(envelope.id)}",
        f"type: {printable(envelope.type)}",
        f"destination: {printable(envelope.destination)}",
    ]
    if envelope.key is not None:
        lines.append(f"key: {printable(envelope.key)}")
    lines.append(f"attempt: {envelope.attempt}")
    lines.append("headers:")
    lines.extend(f"  {printable(k)}: {printable(v)}" for k, v in sorted(envelope.wire_headers.items()))
    lines.append(f"body ({printable(envelope.content_type or 'unknown content type')}):")
    lines.extend("  " + line for line in _body_text(envelope.body, full).splitlines() or [""])
    return "\n".join(lines)


def add_parsers(commands: Any) -> None:
    """Add ``dlq``, ``tail`` and ``publish`` to the ``messagebus`` command's subparsers."""
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Dead-letter queues on the broker of URL: list them with their depth, show their messages "
        "(nothing is removed), replay them to the group or queue they failed in (and no other), or purge them.",
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = actions.add_parser("list", help="every dead-letter queue with its depth")
    listing.add_argument("url", help="a transport URL (its password is never printed)")
    show = actions.add_parser("show", help="print dead letters with headers and a readable body; removes nothing")
    replay = actions.add_parser(
        "replay",
        help="send dead letters back to the group or queue they failed in",
        description="Each dead letter goes back to the one group (or queue) it failed in, with its id, type, "
        "headers and body, as a first attempt; it is removed only after the broker confirmed the replay.",
    )
    purge = actions.add_parser("purge", help="remove every dead letter of a queue")
    for action in (show, replay, purge):
        action.add_argument("url", help="a transport URL")
        action.add_argument("dlq", help="a dead-letter queue, e.g. orders.created.billing.dlq ('dlq list')")
    show.add_argument("--limit", type=int, default=10, help="at most this many (default 10)")
    show.add_argument("--full", action="store_true", help="print whole bodies (default: the first 4 KiB)")
    replay.add_argument("--limit", type=int, default=None, help="at most this many (default: all)")
    replay.add_argument("--id", action="append", dest="ids", metavar="ID", help="only this message id (repeatable)")
    purge.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")

    tail = commands.add_parser(
        "tail",
        help="print a topic's messages as they pass",
        description="Subscribe to TOPIC with a throwaway group (tail-<random>) that takes nothing from existing "
        "groups, print each message (headers, key, decoded body) until Ctrl-C, then delete the group.",
    )
    tail.add_argument("url", help="a transport URL")
    tail.add_argument("topic", help="a topic, or a pattern (orders.*) where the broker has wildcards")
    tail.add_argument("--limit", type=int, default=None, help="exit after this many messages")
    tail.add_argument("--full", action="store_true", help="print whole bodies (default: the first 4 KiB)")

    replay = commands.add_parser(
        "replay",
        help="print a topic's history from a point in time",
        description="Read TOPIC's retained messages from --from with a new group (Bus.replay), print each "
        "(headers, key, decoded body) and exit once caught up. The group is a throwaway replay-<random>, deleted "
        "at the end; a --group you name is kept, so the next replay with it goes on from where this one ended. "
        "Live groups are never touched. Brokers without history refuse with the reason.",
    )
    replay.add_argument("url", help="a transport URL (with the broker's history opt-in where it needs one)")
    replay.add_argument("topic", help="a topic")
    replay.add_argument(
        "--from",
        dest="start",
        default="earliest",
        help="earliest (default), an ISO 8601 time (UTC unless it names a zone) or a span back from now: "
        "90s, 15m, 2h, 7d",
    )
    replay.add_argument(
        "--group", default=None, help="a new group to read with, kept afterwards (default: a throwaway)"
    )
    replay.add_argument(
        "--idle", type=float, default=2.0, help="seconds without a message that end it where the broker tells no depth"
    )
    replay.add_argument("--full", action="store_true", help="print whole bodies (default: the first 4 KiB)")

    publish = commands.add_parser(
        "publish",
        help="publish (or send) one hand-made JSON message",
        description="Publish JSON to topic DEST (every group gets it), or with --queue send it to queue DEST.",
    )
    publish.add_argument("url", help="a transport URL")
    publish.add_argument("destination", metavar="DEST", help="a topic (or, with --queue, a queue)")
    publish.add_argument("json", metavar="JSON", help="the body, a JSON document such as '{\"id\": 1}'")
    publish.add_argument("--queue", action="store_true", help="DEST is a queue: send instead of publish")
    publish.add_argument("--key", default=None, help="the ordering key")
    publish.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="a header (repeatable)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a parsed ``dlq``, ``tail`` or ``publish`` command, printing to ``out`` (standard
    output by default); returns the exit status. Raises :class:`UsageError` or
    :class:`MessageBusError`."""
    out = out or sys.stdout
    if args.command == "publish":
        payload, headers = _publish_input(args)
        asyncio.run(_publish(args, payload, headers, out))
        return 0
    if args.command == "replay":
        validate_name(args.topic, "topic")
        start = parse_position(args.start)
        if start is None:
            raise UsageError("--from latest has no history to replay; give earliest, a time or a span such as 2h")
        return asyncio.run(_replay(args, start, out))
    if args.command == "tail":
        validate_name(args.topic.replace("*", "x").replace("#", "x"), "topic")
        _positive(args.limit, "--limit")
        asyncio.run(_tail(args, out))
        return 0
    if args.dlq_command != "list":
        check_dead_letter_queue(args.dlq)
    if args.dlq_command == "purge" and not args.yes and not _confirmed(args.dlq):
        raise UsageError(f"not purged: confirm with --yes to remove every dead letter of {args.dlq}")
    _positive(getattr(args, "limit", None), "--limit")
    return asyncio.run(_dlq(args, out))


def _positive(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{what} must be >= 1, got {value}")


def _confirmed(dlq: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"remove every dead letter of {dlq}? [y/N] ").strip().lower() in ("y", "yes")


def _publish_input(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    try:
        payload = json.loads(args.json)
    except ValueError as exc:
        raise UsageError(f"JSON is not valid JSON ({exc}); quote it for the shell, e.g. '{{\"id\": 1}}'") from None
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--header takes NAME=VALUE, got {item!r}")
        headers[name] = value
    return payload, headers


@contextlib.asynccontextmanager
async def _bus(url: str) -> Any:
    bus = Bus.from_url(url, service=_SERVICE)
    async with bus:
        yield bus


async def _publish(args: argparse.Namespace, payload: Any, headers: dict[str, str], out: TextIO) -> None:
    async with _bus(args.url) as bus:
        if args.queue:
            await bus.send(args.destination, payload, key=args.key, headers=headers or None)
        else:
            await bus.publish(args.destination, payload, key=args.key, headers=headers or None)
    verb = "sent to queue" if args.queue else "published to topic"
    print(f"{verb} {args.destination}", file=out)


async def _dlq(args: argparse.Namespace, out: TextIO) -> int:
    async with _bus(args.url) as bus:
        if args.dlq_command == "list":
            queues = await bus.dead_letter_queues()
            if not queues:
                print("no dead-letter queues", file=out)
            width = max((len(q.name) for q in queues), default=0)
            for q in queues:
                print(f"{q.name:<{width}}  {'?' if q.depth is None else q.depth}", file=out)
        elif args.dlq_command == "show":
            envelopes = await bus.peek_dead_letters(args.dlq, args.limit)
            if not envelopes:
                print(f"{args.dlq} is empty", file=out)
            for i, envelope in enumerate(envelopes, 1):
                print(f"--- {i}/{len(envelopes)}", file=out)
                print(render(envelope, full=args.full), file=out)
                source = origin(args.dlq, envelope.wire_headers)
                print(f"replays to: {source or '(nowhere: no dlq-destination of this queue)'}", file=out)
        elif args.dlq_command == "replay":
            count = await bus.replay_dead_letters(args.dlq, args.limit, ids=args.ids)
            print(f"replayed {count} dead letter(s) from {args.dlq}", file=out)
            if args.ids and count < len(set(args.ids)):
                print(f"{len(set(args.ids)) - count} of the given ids were not found", file=out)
                return 1
        else:
            count = await bus.purge_dead_letters(args.dlq)
            print(f"purged {count} dead letter(s) from {args.dlq}", file=out)
    return 0


async def _tail(args: argparse.Namespace, out: TextIO) -> None:
    group = f"tail-{os.urandom(4).hex()}"
    bus = Bus.from_url(args.url, service=_SERVICE)
    stop = asyncio.Event()
    seen = 0

    @bus.subscribe(args.topic, group=group)
    async def show(payload: object, envelope: Envelope) -> None:
        nonlocal seen
        seen += 1
        print(f"--- {envelope.destination} #{seen}", file=out)
        print(render(envelope, full=args.full), file=out, flush=True)
        if args.limit is not None and seen >= args.limit:
            stop.set()

    source = Destination(DestinationKind.TOPIC, args.topic, group)
    with stop_on_signals(stop):
        await bus.start()
        try:
            print(f"tailing {args.topic} (group {group}); Ctrl-C stops", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            await bus.stop(grace=5.0)
            # The throwaway group goes with the command (its queue would otherwise fill forever).
            await _delete_group(bus, source)


async def _replay(args: argparse.Namespace, start: Literal["earliest"] | datetime, out: TextIO) -> int:
    seen = 0

    async def show(payload: object, envelope: Envelope) -> None:
        nonlocal seen
        seen += 1
        print(f"--- {envelope.destination} #{seen}", file=out)
        print(render(envelope, full=args.full), file=out, flush=True)

    async with _bus(args.url) as bus:
        handled = await bus.replay(args.topic, show, start_from=start, group=args.group, idle=args.idle)
    since = start if isinstance(start, str) else start.isoformat()
    kept = f"; group {args.group} kept" if args.group else ""
    print(f"replayed {handled} message(s) of {args.topic} from {since}{kept}", file=out)
    return 0


async def _delete_group(bus: Bus, source: Destination) -> None:
    # The bus closed its transport; a closed transport need not reopen, so make a new one.
    assert bus.url is not None
    transport = load_transport(bus.url)
    await transport.connect()
    try:
        await admin_of(transport).delete_group(source)
    finally:
        await transport.close()
