"""Messages <-> AMQP 0-9-1 properties: CloudEvents AMQP binding, persistence, key and attempt."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pamqp.commands import Basic

from messagebus import InvalidHeaders
from messagebus.transports import headers as h
from messagebus.transports import to_wire

__all__ = ["CE_AMQP_PREFIX", "FastProperties", "attempt_of", "decode_headers", "encode_properties", "header_frame_size"]

#: CloudEvents AMQP binding: attributes travel as application properties (the headers table)
#: ``cloudEvents_<attr>``, the separator the binding prefers (JMS selectors cannot use ``:``).
CE_AMQP_PREFIX = "cloudEvents_"
#: Every prefix read on receipt: both of the AMQP binding's, which readers SHOULD understand
#: (``ce-`` attributes, the HTTP and RabbitMQ-eventing form, are logical names already).
_CE_AMQP_PREFIXES = ("cloudEvents_", "cloudEvents:")
_CE, _PREFIX_LEN = h.CE_PREFIX, len(CE_AMQP_PREFIX)
_WIRE_CONTENT_TYPE = CE_AMQP_PREFIX + h.CE_CONTENT_TYPE[len(h.CE_PREFIX) :]
_LONG = struct.Struct(">L")
_FLAGS = struct.Struct(">H")
# Table entries of headers whose values repeat on every message of a service, encoded once.
_CONSTANT_NAMES = frozenset(CE_AMQP_PREFIX + n[len(h.CE_PREFIX) :] for n in (h.CE_SOURCE, h.CE_TYPE, h.CE_SPECVERSION))
_ENTRY_CACHE: dict[tuple[str, str], bytes] = {}
_OTHER_PROPERTIES = (
    *("content_encoding", "priority", "correlation_id", "reply_to", "expiration"),
    *("timestamp", "message_type", "user_id", "app_id", "cluster_id"),
)


def _entry(name: str, value: str) -> bytes:
    cached = _ENTRY_CACHE.get((name, value))
    if cached is not None:
        return cached
    key, data = name.encode(), value.encode()
    entry = bytes((len(key),)) + key + b"S" + _LONG.pack(len(data)) + data
    if name in _CONSTANT_NAMES and len(_ENTRY_CACHE) < 1024:
        _ENTRY_CACHE[(name, value)] = entry
    return entry


def _shortstr(value: str) -> bytes | None:
    """``value`` as an AMQP short string (length byte, UTF-8), or None beyond 255 bytes."""
    data = value.encode()
    return bytes((len(data),)) + data if len(data) <= 255 else None


class FastProperties(Basic.Properties):
    """``Basic.Properties`` with a faster ``marshal`` for the shape messagebus publishes
    (content type, a table of string headers, delivery mode, message id).

    pamqp's generic encoder sorts and type-checks every table entry on every publish; this
    writes the same AMQP bytes directly (entries in insertion order, which AMQP allows) and
    reuses the encoding of headers that never change (source, type, specversion). Other
    shapes fall back to pamqp. The encoding is computed once and kept (the publish path
    measures it against the broker's frame size, then aiormq writes it): do not change the
    properties after the first :meth:`marshal`.
    """

    _marshalled: bytes | None = None

    def marshal(self) -> bytes:
        """The property flags and values in AMQP 0-9-1 wire format."""
        data = self._marshalled
        if data is None:
            data = self._marshalled = self._marshal()
        return data

    def _marshal(self) -> bytes:
        content_type = _shortstr(self.content_type or "")
        message_id = _shortstr(self.message_id or "")
        if content_type is None or message_id is None or any(getattr(self, n) for n in _OTHER_PROPERTIES):
            return super().marshal()
        flags = 0
        parts: list[bytes] = []
        if self.content_type:
            flags |= 0x8000
            parts.append(content_type)
        if self.headers:
            entries = []
            for name, value in self.headers.items():
                if type(value) is not str:
                    return super().marshal()
                entries.append(_entry(name, value))
            table = b"".join(entries)
            flags |= 0x2000
            parts.append(_LONG.pack(len(table)) + table)
        if self.delivery_mode is not None:
            flags |= 0x1000
            parts.append(bytes((self.delivery_mode,)))
        if self.message_id:
            flags |= 0x0080
            parts.append(message_id)
        return _FLAGS.pack(flags) + b"".join(parts)


def encode_properties(headers: Mapping[str, str], key: str | None) -> Basic.Properties:
    """AMQP properties for a message: persistent, ``content_type`` (CloudEvents
    ``datacontenttype``) and ``message_id`` (``id``), every other header in the table with
    ``ce-*`` renamed ``cloudEvents:*``, and the key in ``messagebus-key`` (AMQP has no key
    field). Raises :class:`InvalidHeaders` for a name over 255 bytes (pamqp would silently
    cut it at 128)."""
    # The binding maps datacontenttype to the content_type property, not to a table entry.
    table: dict[str, Any] = to_wire(headers, CE_AMQP_PREFIX)
    table.pop(_WIRE_CONTENT_TYPE, None)
    for name in table:
        # Up to 63 characters always fit 255 bytes; check the rest before anything is sent.
        if len(name) > 63 and len(name.encode()) > 255:
            raise InvalidHeaders(
                f"header name {name[:40]!r}... is {len(name.encode())} bytes in UTF-8; AMQP allows at most 255"
            )
    if key is not None:
        table[h.KEY] = key
    return FastProperties(
        content_type=headers.get(h.CE_CONTENT_TYPE, "application/json"),
        delivery_mode=2,  # persistent
        message_id=headers.get(h.CE_ID) or None,
        headers=table,
    )


def header_frame_size(properties: Basic.Properties) -> int:
    """Payload bytes of the AMQP content-header frame carrying ``properties``: class id,
    weight and body size (12 bytes), then the properties. RabbitMQ closes the whole
    connection (``FRAME_ERROR frame_too_large``) when it exceeds ``frame_max`` - 8."""
    return 12 + len(properties.marshal())


def decode_headers(properties: Basic.Properties) -> Mapping[str, str]:
    """The logical headers of a received message.

    Strings are kept; numbers and booleans written as text, timestamps as ISO 8601 UTC;
    structured broker-added values (``x-death`` ...) left out (they stay readable on
    ``raw``). Both binding prefixes (``cloudEvents_`` and ``cloudEvents:``) become ``ce-``;
    an integer ``time`` attribute is the AMQP 1.0 timestamp (milliseconds since the epoch)
    that the CloudEvents SDK writes. A foreign producer's properties stand in for missing
    attributes: ``message_id`` for ``id`` and ``timestamp`` for ``time``. The ``content_type``
    property is ``datacontenttype`` (the binding maps it there, never to a table entry).
    """
    out: dict[str, str] = {}
    for name, value in (properties.headers or {}).items():
        if name.startswith(_CE_AMQP_PREFIXES):
            name = _CE + name[_PREFIX_LEN:]
        text = _text(name, value)
        if text is not None:
            out[name] = text
    if properties.content_type:
        out[h.CE_CONTENT_TYPE] = properties.content_type
    return h.with_broker_defaults(out, properties.message_id, properties.timestamp)


def _text(name: str, value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return h.iso_utc(value)
    if isinstance(value, int) and not isinstance(value, bool) and name == h.CE_TIME:
        return h.iso_utc(value / 1000)
    if isinstance(value, bool | int | float):
        return str(value)
    return None


def attempt_of(headers: Mapping[str, str], redelivered: bool) -> int:
    """Delivery attempt: the ``messagebus-attempt`` header written by a retry (1 if absent),
    plus one when the broker redelivers a message that was never settled."""
    try:
        attempt = max(1, int(headers.get(h.ATTEMPT, 1)))
    except ValueError:
        attempt = 1
    return attempt + 1 if redelivered else attempt
