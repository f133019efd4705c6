"""Header names on the wire: CloudEvents 1.0 binary mode, trace context, retry metadata.

Inside messagebus every header is a ``str -> str`` pair. CloudEvents attributes use their
canonical ``ce-`` names (``ce-id``, ``ce-source`` ...); each adapter renames that prefix to
its binding's (``ce_`` for Kafka, ``cloudEvents_`` for AMQP, ``ce-`` for SQS and Pub/Sub)
with :func:`to_wire` and back with :func:`from_wire`.

A message from a foreign producer may carry no CloudEvents ``id`` or ``time``; an adapter
then hands over the broker's own message id and timestamp with :func:`with_broker_defaults`
on the logical headers it gives its :class:`~messagebus.transports.Delivery`, so that
``Envelope.id`` and ``Envelope.timestamp`` are set, and stay the same on a retry or in the
dead-letter queue (the copy carries them as CloudEvents attributes).

The header rule, the same on every transport and checked by :func:`validate_headers` when
the bus builds a message (before any transport sees it):

- headers are a mapping of ``str`` to ``str``, valid Unicode (no lone surrogates);
- a name is non-empty and at most :data:`MAX_NAME_BYTES` (255) bytes in UTF-8, the smallest
  limit of the brokers (an AMQP table key is a short string; Pub/Sub and SQS allow 256);
- names of any CloudEvents binding and messagebus's own are reserved, case-insensitively:
  names starting with ``ce-``, ``ce_``, ``cloudEvents`` (``cloudEvents_``, ``cloudEvents:``)
  or ``messagebus-``, and ``content-type``, so a user header can never set or spoof the
  envelope (``Envelope.id``, ``type``, ``source`` ...) on any broker;
- names and values together take at most :data:`MAX_HEADERS_BYTES` (64 KiB) in UTF-8:
  headers are metadata, the body is for data. This keeps every message's headers inside the
  smallest header budget of the brokers (a RabbitMQ content-header frame is 128 KiB by
  default) so that one oversized header is refused here, never by the broker.

A violation raises :class:`InvalidHeaders` naming the header and what is allowed. Each
transport then checks its own limits on the whole message (body, headers and key) and raises
:class:`MessageTooLarge` before sending anything that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from ._errors import InvalidHeaders

__all__ = [
    "ATTEMPT",
    "CE_CONTENT_TYPE",
    "CE_ID",
    "CE_PARTITIONKEY",
    "CE_PREFIX",
    "CE_SOURCE",
    "CE_SPECVERSION",
    "CE_TIME",
    "CE_TYPE",
    "DLQ_ATTEMPTS",
    "DLQ_DESTINATION",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_TYPE",
    "DLQ_FIRST_FAILURE",
    "DLQ_GROUP",
    "DELIVER_AT",
    "DLQ_LAST_FAILURE",
    "DLQ_REPLAYED",
    "DLQ_TOPIC",
    "FIRST_FAILURE",
    "HELD",
    "KEY",
    "NACKS",
    "REPLY_BY",
    "REPLY_ERROR_MESSAGE",
    "REPLY_ERROR_TYPE",
    "REPLY_TO",
    "CORRELATION_ID",
    "RESERVED_PREFIXES",
    "from_wire",
    "iso_utc",
    "produced_at",
    "to_wire",
    "validate_headers",
    "with_broker_defaults",
]

CE_PREFIX = "ce-"
CE_ID = "ce-id"
CE_SOURCE = "ce-source"
CE_TYPE = "ce-type"
CE_SPECVERSION = "ce-specversion"
CE_TIME = "ce-time"
CE_CONTENT_TYPE = "ce-datacontenttype"
#: The CloudEvents partitioning extension: stands in for the key when the broker gives none.
CE_PARTITIONKEY = "ce-partitionkey"

#: Delivery attempt carried by transports whose retries re-publish the message.
ATTEMPT = "messagebus-attempt"
#: When the first failed attempt happened (ISO 8601 UTC), carried across retries.
FIRST_FAILURE = "messagebus-first-failure"
#: How many of a message's deliveries ended in a ``Nack`` (not failures), carried across
#: redeliveries: ``Envelope.attempt - nacks`` is the number of failures so far.
NACKS = "messagebus-nacks"
#: The message key, for transports with no native key field.
KEY = "messagebus-key"
#: When a delayed message is due (Unix epoch milliseconds, an int): the consumer holds it
#: back until then (``delay=`` on publish and send).
DELIVER_AT = "messagebus-deliver-at"
#: How many deliveries of a delayed message were held back until due (not attempts:
#: ``Envelope.attempt`` leaves them out).
HELD = "messagebus-held"
#: The logical queue a reply goes to (set by ``Bus.request``).
REPLY_TO = "messagebus-reply-to"
#: The ``ce-id`` of the request a reply answers.
CORRELATION_ID = "messagebus-correlation-id"
#: When the caller stops waiting for a reply (Unix epoch milliseconds): later, no reply is sent.
REPLY_BY = "messagebus-reply-by"
#: On an error reply: the qualified type name and the message of what the responder raised.
REPLY_ERROR_TYPE = "messagebus-error-type"
REPLY_ERROR_MESSAGE = "messagebus-error-message"

DLQ_DESTINATION = "dlq-destination"
DLQ_GROUP = "dlq-group"
DLQ_ERROR_TYPE = "dlq-error-type"
DLQ_ERROR_MESSAGE = "dlq-error-message"
DLQ_ATTEMPTS = "dlq-attempts"
DLQ_FIRST_FAILURE = "dlq-first-failure"
DLQ_LAST_FAILURE = "dlq-last-failure"
#: When a dead letter was last replayed (ISO 8601 UTC); kept if the message fails again.
DLQ_REPLAYED = "dlq-replayed"
#: The topic a pattern subscription's dead letter was published to (``dlq-destination`` is the pattern).
DLQ_TOPIC = "dlq-topic"

#: Prefixes of the logical headers messagebus sets itself; :attr:`Envelope.headers` leaves
#: them out.
RESERVED_PREFIXES = (CE_PREFIX, "messagebus-")
#: Lower-case prefixes a user header name must not start with (compared case-insensitively):
#: every CloudEvents binding's (``ce-`` HTTP/Pub/Sub/SQS, ``ce_`` Kafka, ``cloudEvents_`` and
#: ``cloudEvents:`` AMQP) and messagebus's own.
RESERVED_NAME_PREFIXES = ("ce-", "ce_", "cloudevents", "messagebus-")
#: Lower-case names a user header must not have: the CloudEvents content type of the Kafka
#: and HTTP bindings.
RESERVED_NAMES = frozenset({"content-type"})
#: Longest header name, in UTF-8 bytes.
MAX_NAME_BYTES = 255
#: Most bytes (UTF-8) the names and values of one message's headers may take together.
MAX_HEADERS_BYTES = 64 * 1024

_RESERVED_TEXT = "names starting with ce-, ce_, cloudEvents (any case) or messagebus-, and content-type"


def _utf8_size(text: str, what: str) -> int:
    # isascii() is O(1) on CPython: the common case costs no encoding.
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise InvalidHeaders(f"{what} is not valid Unicode ({exc.reason} at {exc.start}); use valid text") from None


def _short(name: str) -> str:
    return repr(name) if len(name) <= 40 else f"{name[:40]!r}..."


def validate_headers(headers: object) -> dict[str, str]:
    """Return a copy of ``headers`` if it follows the header rule (see the module docstring):
    a ``str -> str`` mapping, names of 1 to 255 UTF-8 bytes that are not reserved, at most
    64 KiB of names and values in all.

    Raises :class:`InvalidHeaders` saying which entry is wrong and what is allowed. One pass,
    no regular expression: it runs on every publish with headers.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidHeaders(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    out: dict[str, str] = {}
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise InvalidHeaders(f"header names must be non-empty str, got {name!r}")
        if not isinstance(value, str):
            raise InvalidHeaders(
                f"header {_short(name)} has a {type(value).__name__} value {value!r:.80}; header values must be str"
            )
        lowered = name.lower()
        if lowered.startswith(RESERVED_NAME_PREFIXES) or lowered in RESERVED_NAMES:
            raise InvalidHeaders(
                f"header {_short(name)} uses a reserved prefix or name ({_RESERVED_TEXT}): they carry the "
                "message envelope on the wire; choose another name"
            )
        size = _utf8_size(name, f"header name {_short(name)}")
        if size > MAX_NAME_BYTES:
            raise InvalidHeaders(
                f"header name {_short(name)} is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} are allowed"
            )
        total += size + _utf8_size(value, f"the value of header {_short(name)}")
        out[name] = value
    if total > MAX_HEADERS_BYTES:
        largest = max(out, key=lambda n: len(n) + len(out[n]))
        raise InvalidHeaders(
            f"headers take {total} bytes (names and values, UTF-8); at most {MAX_HEADERS_BYTES} are allowed "
            f"per message (the largest is {_short(largest)}, {len(out[largest])} characters): put data in the body"
        )
    return out


def to_wire(headers: Mapping[str, str], ce_prefix: str) -> dict[str, str]:
    """Rename the CloudEvents ``ce-`` prefix to a binding's prefix (``ce_``, ``cloudEvents:``)."""
    if ce_prefix == CE_PREFIX:
        return dict(headers)
    n = len(CE_PREFIX)
    return {(ce_prefix + k[n:] if k.startswith(CE_PREFIX) else k): v for k, v in headers.items()}


def from_wire(headers: Mapping[str, str], ce_prefix: str) -> dict[str, str]:
    """Inverse of :func:`to_wire`: rename a binding's CloudEvents prefix back to ``ce-``."""
    if ce_prefix == CE_PREFIX:
        return dict(headers)
    n = len(ce_prefix)
    return {(CE_PREFIX + k[n:] if k.startswith(ce_prefix) else k): v for k, v in headers.items()}


def with_broker_defaults(
    headers: Mapping[str, str], message_id: str | None = None, time: datetime | float | None = None
) -> Mapping[str, str]:
    """``headers`` (logical) with the broker's own ``message_id`` and ``time`` standing in for
    a missing or empty CloudEvents ``id`` (``ce-id``) and ``time`` (``ce-time``).

    ``time`` is a datetime (naive means UTC) or seconds since the epoch; it is written as
    ISO 8601 UTC, as the bus writes ``time``. Returns ``headers`` itself when nothing is
    missing (messagebus's own messages: no copy on the hot path), else a new dict. Pure;
    raises nothing (a timestamp out of range is left out).
    """
    new_id = message_id if message_id and not headers.get(CE_ID) else None
    new_time = iso_utc(time) if time is not None and not headers.get(CE_TIME) else None
    if new_id is None and new_time is None:
        return headers
    out = dict(headers)
    if new_id is not None:
        out[CE_ID] = new_id
    if new_time is not None:
        out[CE_TIME] = new_time
    return out


def produced_at(headers: Mapping[str, str]) -> datetime | None:
    """The CloudEvents ``time`` (``ce-time``) of a message's headers as written (naive when
    the producer named no zone), or ``None`` when missing or unreadable. Pure."""
    value = headers.get(CE_TIME)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def iso_utc(time: datetime | float) -> str | None:
    """``time`` (a datetime, naive meaning UTC, or seconds since the epoch) as ISO 8601 UTC,
    the form of CloudEvents ``time`` the bus writes; ``None`` when it is out of range."""
    try:
        if isinstance(time, datetime):
            return (time if time.tzinfo is not None else time.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        return datetime.fromtimestamp(time, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None  # a foreign producer's nonsense timestamp: no time rather than a failure
