"""Messages <-> AMQP 0-9-1 frames: CloudEvents AMQP binding, persistence, key and attempt."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp.commands import Basic

from messagebus import InvalidHeaders
from messagebus.transports import headers as h
from messagebus.transports import to_wire

__all__ = [
    "CE_AMQP_PREFIX",
    "CE_AMQP_PREFIXES",
    "FastProperties",
    "attempt_of",
    "decode_headers",
    "encode_properties",
    "header_frame_size",
]

#: CloudEvents AMQP binding: attributes travel as application properties named ``cloudEvents:<attr>``.
CE_AMQP_PREFIX = "cloudEvents:"
#: Both prefixes of the binding, read on receipt (its current version prefers ``cloudEvents_``).
CE_AMQP_PREFIXES = ("cloudEvents:", "cloudEvents_")
_PERSISTENT = 2
_CE_ID = h.CE_ID
_CE_CONTENT_TYPE = h.CE_CONTENT_TYPE
_KEY = h.KEY
_ATTEMPT = h.ATTEMPT
_PREFIX_LEN = len(CE_AMQP_PREFIX)
_CE = h.CE_PREFIX
_WIRE_CONTENT_TYPE = CE_AMQP_PREFIX + h.CE_CONTENT_TYPE[len(h.CE_PREFIX) :]
# class id (2), weight (2) and body size (8) precede the properties in a content-header frame.
_HEADER_FRAME_FIXED = 12


_LONG = struct.Struct(">L")
_FLAGS = struct.Struct(">H")
#: Encoded table entries of headers whose values repeat on every message of a service.
_CONSTANT_NAMES = frozenset(
    CE_AMQP_PREFIX + name[len(h.CE_PREFIX) :] for name in (h.CE_SOURCE, h.CE_TYPE, h.CE_SPECVERSION)
)
_ENTRY_CACHE: dict[tuple[str, str], bytes] = {}
_OTHER_PROPERTIES = (
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
)


def _entry(name: str, value: str) -> bytes:
    cached = _ENTRY_CACHE.get((name, value))
    if cached is not None:
        return cached
    key = name.encode()
    if len(key) > 255:
        # A table field name is an AMQP short string. (pamqp would silently cut it at 128 bytes.)
        raise InvalidHeaders(f"header name {name[:40]!r}... is {len(key)} bytes in UTF-8; AMQP allows at most 255")
    data = value.encode()
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
    reuses the encoding of headers that never change (source, type, specversion). Header
    names keep up to 255 bytes (pamqp cuts them at 128); longer ones raise
    :class:`InvalidHeaders`. Other shapes fall back to pamqp.

    The encoding is computed once and kept (the publish path measures it against the
    broker's frame size before sending, then aiormq writes it): do not change the properties
    after the first :meth:`marshal`.
    """

    _marshalled: bytes | None = None

    def marshal(self) -> bytes:
        """The property flags and values in AMQP 0-9-1 wire format."""
        data = self._marshalled
        if data is None:
            data = self._marshalled = self._marshal()
        return data

    def _marshal(self) -> bytes:
        for name in _OTHER_PROPERTIES:
            if getattr(self, name):
                return super().marshal()
        flags = 0
        parts: list[bytes] = []
        content_type = self.content_type
        if content_type:
            field = _shortstr(content_type)
            if field is None:
                return super().marshal()
            flags |= 0x8000
            parts.append(field)
        headers = self.headers
        if headers:
            entries = []
            for name, value in headers.items():
                if type(value) is not str:
                    return super().marshal()
                entries.append(_entry(name, value))
            table = b"".join(entries)
            flags |= 0x2000
            parts.append(_LONG.pack(len(table)) + table)
        mode = self.delivery_mode
        if mode is not None:
            flags |= 0x1000
            parts.append(bytes((mode,)))
        message_id = self.message_id
        if message_id:
            field = _shortstr(message_id)
            if field is None:
                return super().marshal()
            flags |= 0x0080
            parts.append(field)
        return _FLAGS.pack(flags) + b"".join(parts)


def encode_properties(headers: Mapping[str, str], key: str | None) -> Basic.Properties:
    """AMQP properties for a message: persistent, ``content_type`` (CloudEvents
    ``datacontenttype``) and ``message_id`` (``id``), every other header in the table with
    ``ce-*`` renamed ``cloudEvents:*`` (CloudEvents AMQP binding), and the key in
    ``messagebus-key`` (AMQP has no key field)."""
    # The binding maps datacontenttype to the content_type property, not to a table entry.
    table: dict[str, Any] = to_wire(headers, CE_AMQP_PREFIX)
    table.pop(_WIRE_CONTENT_TYPE, None)
    for name in table:
        # Up to 63 characters always fit the 255-byte limit; check the rest before sending.
        if len(name) > 63 and len(name.encode()) > 255:
            raise InvalidHeaders(
                f"header name {name[:40]!r}... is {len(name.encode())} bytes in UTF-8; AMQP allows at most 255"
            )
    if key is not None:
        table[_KEY] = key
    return FastProperties(
        content_type=headers.get(_CE_CONTENT_TYPE, "application/json"),
        delivery_mode=_PERSISTENT,
        message_id=headers.get(_CE_ID) or None,
        headers=table,
    )


def header_frame_size(properties: Basic.Properties) -> int:
    """Payload bytes of the AMQP content-header frame carrying ``properties`` (headers, key,
    content type, message id). RabbitMQ closes the whole connection with ``FRAME_ERROR
    frame_too_large`` when it exceeds the negotiated ``frame_max`` minus 8 bytes of framing."""
    return _HEADER_FRAME_FIXED + len(properties.marshal())


def decode_headers(properties: Basic.Properties) -> dict[str, str]:
    """The logical headers of a received message.

    String values are kept, numbers and booleans are written as text, and structured
    broker-added values (``x-death`` ...) are left out (they stay readable on ``raw``). Both
    prefixes of the CloudEvents AMQP binding (``cloudEvents:`` and ``cloudEvents_``) become
    ``ce-``. A foreign producer's ``content_type`` property stands in for a missing
    ``ce-datacontenttype``.
    """
    table = properties.headers
    out: dict[str, str] = {}
    if table:
        for name, value in table.items():
            if isinstance(value, str):
                pass
            elif isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, bool | int | float):
                value = str(value)
            else:
                continue
            if name.startswith(CE_AMQP_PREFIXES):
                name = _CE + name[_PREFIX_LEN:]
            out[name] = value
    if _CE_CONTENT_TYPE not in out and properties.content_type:
        out[_CE_CONTENT_TYPE] = properties.content_type
    return out


def attempt_of(headers: Mapping[str, str], redelivered: bool) -> int:
    """Delivery attempt: the ``messagebus-attempt`` header written by a retry (1 if absent),
    plus one when the broker redelivers a message that was never settled."""
    text = headers.get(_ATTEMPT)
    attempt = 1
    if text is not None:
        try:
            attempt = max(1, int(text))
        except ValueError:
            attempt = 1
    return attempt + 1 if redelivered else attempt
