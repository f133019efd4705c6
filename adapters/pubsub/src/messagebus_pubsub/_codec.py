"""Messages <-> Pub/Sub messages: attributes, ordering keys and size limits.

Headers travel as Pub/Sub attributes; CloudEvents attributes keep their ``ce-`` names, which
is the CloudEvents Pub/Sub binding. Pub/Sub limits attributes (100 per message, keys up to
256 bytes, values up to 1024 bytes, keys not starting with ``goog``) and ordering keys (1024
bytes). Headers that do not fit are not dropped: they are packed as JSON into chunked
``messagebus-packed-N`` attributes and unpacked on receipt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from google.pubsub_v1.types import PublishRequest, PubsubMessage

from messagebus import MessageTooLarge
from messagebus.transports import headers as h

__all__ = [
    "INTERNAL_HEADERS",
    "MAX_BODY",
    "MAX_REQUEST",
    "NOT_BEFORE",
    "check_size",
    "decode_attributes",
    "encode_attributes",
    "ordering_key_for",
]

#: Pub/Sub's limit on one publish request (the client library enforces it too).
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
# Keyword names of PublisherClient.publish(); an attribute with one of these names would
# collide with the argument, so such headers are packed instead.
_RESERVED_KWARGS = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})
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


def _utf8_chunks(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    if len(text.encode()) <= limit:
        return [text]
    chunks: list[str] = []
    start = size = 0
    for i, char in enumerate(text):
        width = len(char.encode())
        if size + width > limit:
            chunks.append(text[start:i])
            start, size = i, 0
        size += width
    chunks.append(text[start:])
    return chunks


def decode_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Headers from received attributes, unpacking ``messagebus-packed-N`` chunks. Pure."""
    out: dict[str, str] = {}
    chunks: dict[int, str] = {}
    for name, value in attributes.items():
        if name.startswith(PACKED_PREFIX):
            suffix = name[len(PACKED_PREFIX) :]
            if suffix.isdigit():
                chunks[int(suffix)] = value
                continue
        out[name] = value
    if chunks:
        try:
            extra = json.loads("".join(chunks[i] for i in sorted(chunks)))
        except ValueError:
            extra = None
        if isinstance(extra, dict):
            out.update({str(k): str(v) for k, v in extra.items()})
    return out


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
    request = _RAW_REQUEST(
        topic=topic, messages=[_RAW_MESSAGE(data=data, attributes=dict(attributes), ordering_key=ordering_key)]
    )
    total = request.ByteSize()
    if total > MAX_REQUEST:
        raise MessageTooLarge(
            f"message of {total:,} bytes with its attributes exceeds Pub/Sub's {MAX_REQUEST:,}-byte request limit"
        )
