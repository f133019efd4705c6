"""Messages <-> Pub/Sub messages: attributes, ordering keys and size limits.

Headers travel as Pub/Sub attributes; CloudEvents attributes keep their ``ce-`` names, which
is the CloudEvents Pub/Sub binding. Pub/Sub limits attributes (100 per message, keys up to
256 bytes, values up to 1024 bytes, keys not starting with ``goog``) and ordering keys (1024
bytes). Headers that do not fit are not dropped: they are packed as JSON into chunked
``messagebus-packed-N`` attributes and unpacked on receipt.

Reading follows the binding too: attribute names are case-insensitive (``Ce-Id`` is
``ce-id``), a ``Content-Type`` attribute is the data content type, and a message without
``ce-id``/``ce-time`` (a plain Pub/Sub producer's) gets Pub/Sub's message id and publish time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.pubsub_v1.types import PublishRequest, PubsubMessage

from messagebus import MessageTooLarge
from messagebus.transports import headers as h

__all__ = [
    "INTERNAL_HEADERS",
    "MAX_BODY",
    "MAX_REQUEST",
    "check_size",
    "decode_attributes",
    "decode_message",
    "encode_attributes",
    "native_filter",
    "raw_message",
    "read_retry",
    "retry_attributes",
]

#: Pub/Sub's limit on one publish request.
MAX_REQUEST = 10_000_000
#: Largest body guaranteed to fit: the request limit minus room for 100 full attributes.
MAX_BODY = MAX_REQUEST - 128 * 1024

#: Epoch milliseconds before which a re-published retry must not be handled.
NOT_BEFORE = "messagebus-not-before"
PACKED_PREFIX = "messagebus-packed-"
#: Transport-private attributes, never shown as headers.
INTERNAL_HEADERS = frozenset({NOT_BEFORE, h.ATTEMPT, h.KEY})

_MAX_ATTRIBUTES = 100
_MAX_KEY = 256
_MAX_VALUE = 1024
_MAX_ORDERING_KEY = 1024
# Keyword names of the client library's PublisherClient.publish(**attributes): packed, so a
# consumer re-publishing our attributes with that client never collides with its arguments.
_RESERVED_KWARGS = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})
# The binding's data content type attribute (``Content-Type``; names are case-insensitive).
_CONTENT_TYPE = "content-type"
# Pub/Sub's limit on a subscription filter, in bytes.
_MAX_FILTER = 256
_RAW_MESSAGE = PubsubMessage.pb()
_RAW_REQUEST = PublishRequest.pb()


def _native(name: str, value: str) -> bool:
    return (
        0 < len(name.encode()) <= _MAX_KEY
        and len(value.encode()) <= _MAX_VALUE
        and not name.lower().startswith("goog")
        and not name.startswith(PACKED_PREFIX)
        and name not in _RESERVED_KWARGS
    )


def ordering_key_for(key: str | None) -> str:
    """The Pub/Sub ordering key for a message key ('' for none); keys over 1024 bytes are
    replaced by their SHA-256 (the original travels in the ``messagebus-key`` attribute)."""
    if not key:
        return ""
    if len(key.encode()) <= _MAX_ORDERING_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def encode_attributes(headers: Mapping[str, str], key: str | None, ordering: bool) -> tuple[dict[str, str], str]:
    """Attributes and ordering key for a message. Raises :class:`MessageTooLarge` when the
    headers cannot fit in 100 attributes even when packed."""
    native: dict[str, str] = {}
    packed: dict[str, str] = {}
    for name, value in headers.items():
        if len(native) < _MAX_ATTRIBUTES - 10 and _native(name, value):
            native[name] = value
        else:
            packed[name] = value
    ordering_key = ordering_key_for(key) if ordering else ""
    if key and ordering_key != key:
        # The native key field cannot carry it (ordering off, or too long): keep it here.
        if _native(h.KEY, key):
            native[h.KEY] = key
        else:
            packed[h.KEY] = key
    if packed:
        blob = json.dumps(packed, ensure_ascii=False, separators=(",", ":"))
        chunks = _utf8_chunks(blob, _MAX_VALUE)
        if len(native) + len(chunks) > _MAX_ATTRIBUTES:
            raise MessageTooLarge(
                f"headers too large for Pub/Sub: {len(headers)} headers need {len(native) + len(chunks)} "
                f"attributes, at most {_MAX_ATTRIBUTES} are allowed (values up to {_MAX_VALUE} bytes)"
            )
        for i, chunk in enumerate(chunks):
            native[f"{PACKED_PREFIX}{i}"] = chunk
    return native, ordering_key


def native_filter(pairs: Sequence[tuple[str, str]]) -> str:
    """The Pub/Sub subscription filter for header equalities ``pairs`` ('' for none). Pure.

    It may let more through than ``pairs`` ask, never less (the bus matches every message
    again): only pairs that always travel as real attributes (:func:`encode_attributes`) are
    in it, as ``attributes."NAME" = "VALUE"`` (string literals, escaped: a bare name with a
    ``-`` or a leading digit is not read as one name by every parser of the filter grammar),
    ANDed until Pub/Sub's 256-byte limit; and a message with packed headers always passes, since a filtered
    header may be among them."""
    clauses: list[str] = []
    for name, value in pairs:
        if not _native(name, value):
            continue
        clause = f"attributes.{_literal(name)} = {_literal(value)}"
        if len(" AND ".join([*clauses, clause]).encode()) > _MAX_FILTER - 40:
            continue
        clauses.append(clause)
    return f"({' AND '.join(clauses)}) OR attributes:{_literal(PACKED_PREFIX + '0')}" if clauses else ""


def _literal(text: str) -> str:
    # A double-quoted string literal: quotes, backslashes and control characters escaped.
    return json.dumps(text, ensure_ascii=False)


def _utf8_chunks(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    data, chunks = text.encode(), []
    while data:
        cut = min(limit, len(data))
        while cut < len(data) and data[cut] & 0xC0 == 0x80:  # a continuation byte: back up
            cut -= 1
        chunks.append(data[:cut].decode())
        data = data[cut:]
    return chunks or [""]


def decode_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Headers from received attributes, unpacking ``messagebus-packed-N`` chunks; CloudEvents
    names in any case become ``ce-`` names, a ``Content-Type`` attribute the data content
    type. Pure."""
    out: dict[str, str] = {}
    chunks: dict[int, str] = {}
    for name, value in attributes.items():
        if name.startswith(PACKED_PREFIX):
            suffix = name[len(PACKED_PREFIX) :]
            if suffix.isdigit():
                chunks[int(suffix)] = value
                continue
        lowered = name.lower()
        if lowered.startswith(h.CE_PREFIX):
            # User headers cannot start with ce- in any case: this is a binding name.
            out.setdefault(lowered, value)
        elif lowered == _CONTENT_TYPE:
            out.setdefault(h.CE_CONTENT_TYPE, value)
        else:
            out[name] = value
    if chunks:
        try:
            extra = json.loads("".join(chunks[i] for i in sorted(chunks)))
        except ValueError:
            extra = None
        if isinstance(extra, dict):
            out.update({str(k): str(v) for k, v in extra.items()})
    return out


def decode_message(message: Any) -> dict[str, str]:
    """Headers of a received protobuf ``PubsubMessage`` (:func:`decode_attributes`), with
    Pub/Sub's ``message_id`` and ``publish_time`` standing in for a missing ``ce-id`` and
    ``ce-time``. A retry re-published by this transport carries the original's. Pure."""
    published = message.publish_time
    time = published.seconds + published.nanos / 1e9 if published.seconds or published.nanos else None
    return dict(h.with_broker_defaults(decode_attributes(message.attributes), message.message_id, time))


def raw_message(data: bytes, attributes: Mapping[str, str], ordering_key: str) -> Any:
    """The protobuf ``PubsubMessage`` to publish (the raw message: no proto-plus wrapping)."""
    return _RAW_MESSAGE(data=data, attributes=attributes, ordering_key=ordering_key)


def check_size(topic: str, data: bytes, attributes: Mapping[str, str], ordering_key: str) -> None:
    """Raise :class:`MessageTooLarge` if the body exceeds :data:`MAX_BODY` or the publish
    request would exceed Pub/Sub's 10 MB limit. Cheap unless the message is near the limit."""
    size = len(data)
    if size > MAX_BODY:
        raise MessageTooLarge(
            f"message body of {size:,} bytes is larger than the Pub/Sub transport allows ({MAX_BODY:,} "
            f"bytes: Pub/Sub's {MAX_REQUEST:,}-byte request limit minus room for attributes)"
        )
    estimate = size + len(topic) + len(ordering_key) + sum(len(k) + len(v) + 8 for k, v in attributes.items())
    if estimate < MAX_REQUEST - 64 * 1024:
        return
    request = _RAW_REQUEST(topic=topic, messages=[raw_message(data, attributes, ordering_key)])
    total = request.ByteSize()
    if total > MAX_REQUEST:
        raise MessageTooLarge(
            f"message of {total:,} bytes with its attributes exceeds Pub/Sub's {MAX_REQUEST:,}-byte request limit"
        )


def retry_attributes(
    headers: Mapping[str, str], extra: Mapping[str, str], attempt: int, delay: float, key: str | None
) -> dict[str, str]:
    """Attributes of a retry re-published with ``attempt`` and ``extra`` headers, not to be
    handled before ``delay`` seconds from now (the key travels as an attribute: retry
    subscriptions are unordered)."""
    wire = {k: v for k, v in headers.items() if k not in INTERNAL_HEADERS}
    wire.update(extra)
    wire[h.ATTEMPT] = str(attempt)
    if delay > 0:
        wire[NOT_BEFORE] = str(int((time.time() + delay) * 1000))
    return encode_attributes(wire, key, False)[0]


def read_retry(wire: Mapping[str, str]) -> tuple[int, float]:
    """The attempt of a received retry and the epoch seconds before which it must not be
    handled (0 when it is due at once). Malformed values count as attempt 2, due now."""
    try:
        attempt = max(1, int(wire.get(h.ATTEMPT, "2")))
    except ValueError:
        attempt = 2
    try:
        due = float(wire.get(NOT_BEFORE, "0")) / 1000.0
    except ValueError:
        due = 0.0
    return attempt, due
