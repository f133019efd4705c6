"""Messages <-> AMQP 0-9-1 frames: CloudEvents AMQP binding, persistence, key and attempt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pamqp.commands import Basic

from messagebus.transports import headers as h
from messagebus.transports import to_wire

__all__ = ["CE_AMQP_PREFIX", "attempt_of", "decode_headers", "encode_properties"]

#: CloudEvents AMQP binding: attributes travel as application properties named ``cloudEvents:<attr>``.
CE_AMQP_PREFIX = "cloudEvents:"
_PERSISTENT = 2
_CE_ID = h.CE_ID
_CE_CONTENT_TYPE = h.CE_CONTENT_TYPE
_KEY = h.KEY
_ATTEMPT = h.ATTEMPT
_WIRE_PREFIX = CE_AMQP_PREFIX
_PREFIX_LEN = len(CE_AMQP_PREFIX)
_CE = h.CE_PREFIX
_WIRE_CONTENT_TYPE = CE_AMQP_PREFIX + h.CE_CONTENT_TYPE[len(h.CE_PREFIX) :]


def encode_properties(headers: Mapping[str, str], key: str | None) -> Basic.Properties:
    """AMQP properties for a message: persistent, ``content_type`` (CloudEvents
    ``datacontenttype``) and ``message_id`` (``id``), every other header in the table with
    ``ce-*`` renamed ``cloudEvents:*`` (CloudEvents AMQP binding), and the key in
    ``messagebus-key`` (AMQP has no key field)."""
    # The binding maps datacontenttype to the content_type property, not to a table entry.
    table: dict[str, Any] = to_wire(headers, CE_AMQP_PREFIX)
    table.pop(_WIRE_CONTENT_TYPE, None)
    if key is not None:
        table[_KEY] = key
    return Basic.Properties(
        content_type=headers.get(_CE_CONTENT_TYPE, "application/json"),
        delivery_mode=_PERSISTENT,
        message_id=headers.get(_CE_ID) or None,
        headers=table,
    )


def decode_headers(properties: Basic.Properties) -> dict[str, str]:
    """The logical headers of a received message.

    String values are kept, numbers and booleans are written as text, and structured
    broker-added values (``x-death`` ...) are left out (they stay readable on ``raw``). A
    foreign producer's ``content_type`` property stands in for a missing
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
            if name.startswith(_WIRE_PREFIX):
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
