"""An AsyncAPI 3.0 document of a :class:`~messagebus.Bus`, built from its registrations.

What a bus receives comes from its handlers (their parameter annotations are the payload
types); what it sends is what the service declared with :meth:`Bus.publishes` and
:meth:`Bus.sends` (documentation only: the bus cannot know what a handler will publish).
Payload schemas are pydantic's JSON Schemas of those types, shared under
``components/schemas``. No I/O; the document is a plain dict ready for JSON or YAML.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import PydanticInvalidForJsonSchema, PydanticSchemaGenerationError, TypeAdapter

from ._config import _SECRET, TransportURL
from ._destination import Destination, DestinationKind
from ._headers import CE_ID, CE_SOURCE, CE_SPECVERSION, CE_TIME, CE_TYPE, REPLY_TO
from ._message import Envelope
from ._serialization import JSON, OCTET_STREAM, TEXT

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["ASYNCAPI_VERSION", "add_parser", "asyncapi_document", "render", "run"]

ASYNCAPI_VERSION = "3.0.0"

#: AsyncAPI protocol of each transport URL scheme (the names of the AsyncAPI bindings).
_PROTOCOLS = {
    "amqp": "amqp",
    "amqps": "amqps",
    "kafka": "kafka",
    "sqs": "sqs",
    "pubsub": "googlepubsub",
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "redis+sentinel": "redis",
    "nats": "nats",
    "nats+tls": "nats",
}
_HEADERS = "CloudEventsHeaders"
_KEY = re.compile(r"[^A-Za-z0-9_.-]")


def _key(name: str) -> str:
    """A component or channel key from a logical name or pattern: AsyncAPI keys are
    ``[A-Za-z0-9_.-]`` and appear in ``$ref`` fragments, where ``#`` and ``*`` cannot."""
    return _KEY.sub("_", name.replace("*", "_star_").replace("#", "_hash_"))


def _headers_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0 binary-mode attributes, as headers (each broker binding spells the "
        "names its own way on the wire; see docs/interop.md). User headers are added beside them.",
        "properties": {
            CE_ID: {"type": "string", "description": "Unique message id (the CloudEvents id)."},
            CE_SOURCE: {"type": "string", "description": "The publishing service (/<service>)."},
            CE_TYPE: {"type": "string", "description": "The payload type name."},
            CE_SPECVERSION: {"type": "string", "const": "1.0"},
            CE_TIME: {"type": "string", "format": "date-time", "description": "When the message was published."},
            "content-type": {"type": "string", "description": "The media type of the body."},
        },
        "required": [CE_ID, CE_SOURCE, CE_TYPE, CE_SPECVERSION],
    }


def _content_type(payload: Any) -> str:
    if payload in (bytes, bytearray, memoryview):
        return OCTET_STREAM
    return TEXT if payload is str else JSON


def _type_name(payload: Any) -> str:
    if payload is Any:
        return "Any"
    name = getattr(payload, "__name__", None)
    return name if isinstance(name, str) else repr(payload)


def _adapter(payload: Any) -> TypeAdapter[Any]:
    """pydantic's adapter of ``payload``; a type it cannot describe is documented as any JSON."""
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(payload)
        adapter.json_schema()
    except (PydanticSchemaGenerationError, PydanticInvalidForJsonSchema):
        return TypeAdapter(Any)
    return adapter


def _payload_type(fn: Any, batch: int | None) -> Any:
    """The payload type of handler ``fn``: its first parameter's annotation (the item type of
    a ``list[T]`` for batch handlers); ``Any`` when it takes only an Envelope or has none."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return Any
    if not params:
        return Any
    annotation = hints.get(params[0].name, Any)
    if batch is not None and get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (Any,)
    if annotation is Envelope or (params[0].name == "envelope" and params[0].name not in hints):
        return Any
    return annotation


def _reply_type(fn: Any) -> Any | None:
    """The reply type of a queue handler: its return annotation without ``None`` (``X | None``
    replies X or nothing); ``None`` when it is unannotated or annotated ``-> None``."""
    try:
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return None
    annotation = hints.get("return")
    if annotation is None or annotation is type(None):
        return None
    args = get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


@dataclass
class _Builder:
    bus: Bus
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    channel_of: dict[tuple[str, str], str] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    message_of: dict[Any, str] = field(default_factory=dict)
    # (message key, payload type): their schemas are made at once, at the end
    pending: list[tuple[str, Any]] = field(default_factory=list)

    def channel(self, kind: DestinationKind | Literal["reply"], name: str, description: str) -> str:
        known = self.channel_of.get((kind, name))
        if known is not None:
            return known
        key = base = _key(name) if kind != "reply" else _key(name) + ".reply"
        n = 2
        while key in self.channels:
            key, n = f"{base}-{kind}" if n == 2 else f"{base}-{kind}-{n}", n + 1
        self.channel_of[(kind, name)] = key
        self.channels[key] = {
            "address": None if kind == "reply" else name,
            "description": description,
            "messages": {},
        }
        return key

    def message(self, payload: Any) -> str:
        known = self.message_of.get(payload)
        if known is not None:
            return known
        key = base = _key(_type_name(payload))
        n = 2
        while key in self.messages:
            key, n = f"{base}-{n}", n + 1
        self.message_of[payload] = key
        self.messages[key] = {
            "name": key,
            "title": _type_name(payload),
            "contentType": _content_type(payload),
            "headers": {"$ref": f"#/components/schemas/{_HEADERS}"},
        }
        self.pending.append((key, payload))
        return key

    def attach(self, channel: str, payload: Any) -> dict[str, str]:
        """Put the message of ``payload`` on ``channel``; return the operation's reference to it."""
        message = self.message(payload)
        self.channels[channel]["messages"][message] = {"$ref": f"#/components/messages/{message}"}
        return {"$ref": f"#/channels/{channel}/messages/{message}"}

    def operation(self, key: str, body: dict[str, Any]) -> None:
        base, n = key, 2
        while key in self.operations:
            key, n = f"{base}-{n}", n + 1
        self.operations[key] = body

    def schemas(self) -> dict[str, Any]:
        """Every payload schema at once, so pydantic names shared and clashing models apart."""
        # One mode for both directions, so a type sent and received is one schema, not -Input/-Output.
        mode: Literal["validation"] = "validation"
        inputs = [(key, mode, _adapter(payload)) for key, payload in self.pending]
        refs, defs = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
        for key, _, _ in inputs:
            self.messages[key]["payload"] = refs[(key, mode)]
        schemas: dict[str, Any] = {_HEADERS: _headers_schema()}
        schemas.update(defs.get("$defs", {}))
        return schemas


def _receive(builder: _Builder, source: Destination, fn: Any, batch: int | None) -> None:
    pattern = source.is_pattern
    if source.kind is DestinationKind.TOPIC:
        text = f"Topic {source.name!r}: every subscription group gets each message."
        if pattern:
            text = (
                f"Topic pattern {source.name!r} (a subscription to every matching topic: '*' matches one "
                "dot-separated segment, '#' any number); not a topic one publishes to."
            )
    else:
        text = f"Work queue {source.name!r}: each message is handled by one consumer."
    channel = builder.channel(source.kind, source.name, text)
    if pattern:
        builder.channels[channel]["x-messagebus-pattern"] = True
    ref = builder.attach(channel, _payload_type(fn, batch))
    name = getattr(fn, "__qualname__", repr(fn))
    parts = [f"Handled by {name}."]
    body: dict[str, Any] = {"action": "receive", "channel": {"$ref": f"#/channels/{channel}"}, "messages": [ref]}
    if source.group is not None:
        parts.append(f"Subscription group {source.group!r}: instances of one group share the messages.")
        body["x-messagebus-group"] = source.group
    if source.filter:
        pairs = ", ".join(f"{k}={v}" for k, v in source.filter)
        parts.append(f"Only messages whose headers match {pairs}.")
        body["x-messagebus-filter"] = dict(source.filter)
    if batch is not None:
        parts.append(f"Handled in batches of up to {batch} messages.")
    parts.append(f"Failed messages are dead-lettered to queue {source.dead_letter_queue!r}.")
    reply = _reply_type(fn) if source.kind is DestinationKind.QUEUE and batch is None else None
    if reply is not None:
        reply_channel = builder.channel(
            "reply",
            source.name,
            f"Replies to requests on {source.name!r}: sent to the queue the request names in its {REPLY_TO} header.",
        )
        body["reply"] = {
            "address": {"location": f"$message.header#/{REPLY_TO}"},
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": [builder.attach(reply_channel, reply)],
        }
        parts.append(f"Replies to a request (bus.request) with its return value, sent to {REPLY_TO}.")
    body["summary"] = f"{name} receives from {source}"
    body["description"] = " ".join(parts)
    suffix = f".{_key(source.group)}" if source.group is not None else ""
    builder.operation(f"receive.{channel}{suffix}", body)


def _send(builder: _Builder, destination: Destination, payload: Any) -> None:
    if destination.kind is DestinationKind.TOPIC:
        text = f"Topic {destination.name!r}: every subscription group gets each message."
        verb = "publishes to topic"
    else:
        text = f"Work queue {destination.name!r}: each message is handled by one consumer."
        verb = "sends to queue"
    channel = builder.channel(destination.kind, destination.name, text)
    ref = builder.attach(channel, payload)
    builder.operation(
        f"send.{channel}",
        {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [ref],
            "summary": f"{builder.bus.service} {verb} {destination.name!r}",
        },
    )


def _servers(url: TransportURL | None) -> tuple[dict[str, Any], str]:
    """The servers of ``url`` without user name, password or secret options; and a note for
    the info description (memory://, no URL)."""
    if url is None:
        return {}, "The bus was made from a transport, not a URL: no server is documented."
    protocol = _PROTOCOLS.get(url.scheme)
    if url.scheme == "memory" or (protocol is None and not url.hosts):
        return {}, f"Transport {url.scheme}:// runs in the process: there is no broker server."
    # User names are credentials too (kafka's sasl_username), though not secret enough to redact in logs.
    options = {k: v for k, v in url.query.items() if not _SECRET.search(k) and "user" not in k.lower()}
    servers: dict[str, Any] = {}
    for i, (host, port) in enumerate(url.hosts or (("localhost", None),), start=1):
        shown = f"[{host}]" if ":" in host else host
        server: dict[str, Any] = {
            "host": shown if port is None else f"{shown}:{port}",
            "protocol": protocol or url.scheme,
            "description": f"messagebus transport {url.scheme}://",
        }
        if url.path and url.path != "/":
            server["pathname"] = url.path
        if options:
            server["x-messagebus-options"] = options
        servers["broker" if i == 1 else f"broker-{i}"] = server
    return servers, ""


def asyncapi_document(bus: Bus, *, title: str | None = None, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``bus``: a receive operation per handler (a ``reply``
    for a queue handler whose return annotation is not ``None``), a send operation per
    :meth:`Bus.publishes` / :meth:`Bus.sends` declaration, a channel per topic, pattern and
    queue (``address`` is the logical name), payload JSON Schemas from the annotated types,
    CloudEvents headers, and the server of ``bus.url`` without credentials or secret options.

    ``title`` defaults to the service name. Pure: no I/O, and the bus may be in any state;
    two calls on an unchanged bus return equal documents. Raises nothing for types pydantic
    cannot describe (their payload is documented as any value)."""
    builder = _Builder(bus)
    for reg in bus._registrations:
        _receive(builder, reg.source, reg.handler, reg.batch)
    for destination, payload in bus._declared:
        _send(builder, destination, payload)
    schemas = builder.schemas()
    servers, note = _servers(bus.url)
    description = f"Messages of service {bus.service!r} (generated by messagebus from its Bus)."
    info: dict[str, Any] = {
        "title": title if title is not None else bus.service,
        "version": version,
        "description": f"{description} {note}".strip(),
    }
    document: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    if servers:
        document["servers"] = servers
    document["defaultContentType"] = JSON
    document["channels"] = builder.channels
    document["operations"] = builder.operations
    document["components"] = {"schemas": schemas, "messages": builder.messages}
    return document


# -- the `messagebus asyncapi` command ---------------------------------------------------


def render(document: dict[str, Any], format: str) -> str:
    """``document`` as ``"json"`` or ``"yaml"`` text. Raises :class:`ValueError` for another
    format, :class:`ImportError` naming the extra when YAML is asked without PyYAML."""
    if format == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if format != "yaml":
        raise ValueError(f"unknown format {format!r}; expected json or yaml")
    try:
        import yaml
    except ImportError:
        raise ImportError(
            "YAML output needs PyYAML: pip install 'messagebus[asyncapi]' (or use --format json)"
        ) from None
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
    return text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``messagebus asyncapi`` on the ``messagebus`` command's subparsers."""
    parser = commands.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of a service's Bus (no I/O)",
        description="Write the AsyncAPI 3.0.0 document of the Bus named by MODULE:ATTRIBUTE: a channel per "
        "topic, pattern and queue, receive operations for its handlers (with a reply for queue handlers that "
        "return a value), send operations for what it declares with bus.publishes/bus.sends, payload JSON "
        "Schemas of the handlers' types, CloudEvents headers, and the server of its URL without credentials. "
        "Connects to nothing. YAML needs the extra messagebus[asyncapi] (PyYAML).",
    )
    parser.add_argument("bus", help="MODULE:ATTRIBUTE of a Bus, or of a function returning one")
    parser.add_argument(
        "--format",
        choices=["json", "yaml"],
        help="default: yaml when --output ends in .yaml or .yml, else json",
    )
    parser.add_argument("--output", "-o", help="write to this file instead of standard output")
    parser.add_argument("--title", help="info.title (default: the service name)")
    parser.add_argument("--version", default="1.0.0", help="info.version of the API (default: 1.0.0)")


def run(args: argparse.Namespace, load_bus: Callable[[str], Bus], usage_error: type[Exception]) -> int:
    """Run ``messagebus asyncapi``; raises ``usage_error`` (exit status 2) for a bus that
    cannot be loaded, YAML without PyYAML, or an output file that cannot be written."""
    output: str | None = args.output
    format = args.format or ("yaml" if output and output.lower().endswith((".yaml", ".yml")) else "json")
    bus = load_bus(args.bus)
    try:
        text = render(asyncapi_document(bus, title=args.title, version=args.version), format)
    except ImportError as exc:
        raise usage_error(str(exc)) from None
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise usage_error(f"cannot write {output!r}: {exc.strerror or exc}") from None
    return 0
