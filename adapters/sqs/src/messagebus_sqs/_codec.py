"""Wire format: message bodies and headers as SQS/SNS message bodies and attributes.

SQS and SNS carry text bodies only (a restricted XML character set) and at most 10 message
attributes per message, each with a non-empty value and a restricted name. So:

- a body that is valid text for SQS goes as is; any other body (binary, control
  characters, empty) goes base64-encoded with the ``messagebus-body-encoding`` attribute;
- headers become ``String`` attributes, the user's headers first (so SNS filter policies
  and foreign consumers see them as real attributes), then the CloudEvents ``ce-``
  attributes, trace context, and messagebus's own; a header that does not fit in the 10
  slots, or whose name or value SQS refuses, is packed into the one JSON attribute
  ``messagebus-headers`` and unpacked on receive, so nothing is dropped.

Reading also takes what foreign producers send: SNS's JSON envelope (a subscription without
raw delivery: ``Type: Notification``, ``Message``, ``MessageAttributes``, ``MessageId``,
``Timestamp``), CloudEvents attribute names in any case, a ``content-type`` attribute as the
data content type, and the broker's message id and time when there is no ``ce-id``/``ce-time``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from messagebus import DecodeError
from messagebus.transports import headers as h

__all__ = [
    "BODY_ENCODING",
    "MAX_ATTRIBUTES",
    "MAX_BODY_SIZE",
    "MAX_WIRE_SIZE",
    "PACKED",
    "WireMessage",
    "decode_message",
    "encode_message",
    "valid_attribute",
]

#: SQS and SNS limit: body plus every attribute name, type and value (256 KiB).
MAX_WIRE_SIZE = 262_144
#: Largest body accepted: the 256 KiB SQS/SNS limit minus 8 KiB kept for the attributes.
MAX_BODY_SIZE = MAX_WIRE_SIZE - 8192
#: SQS and SNS allow this many message attributes.
MAX_ATTRIBUTES = 10
PACKED = "messagebus-headers"
BODY_ENCODING = "messagebus-body-encoding"

_STRING = "String"
# Characters SQS accepts in bodies and attribute values (XML 1.0 character ranges).
_INVALID_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTR_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_-])?")
_PRIORITY = (h.CE_ID, h.CE_SOURCE, h.CE_TYPE, h.CE_SPECVERSION, h.CE_TIME, h.CE_CONTENT_TYPE)
_TRACE = ("traceparent", "tracestate")
# Headers of the bus and this codec: they yield the attribute slots to the user's.
_ENVELOPE_PREFIXES = ("ce-", "messagebus-")
# A foreign producer's data content type (the HTTP and Pub/Sub bindings' name).
_CONTENT_TYPE = "content-type"


@dataclass(frozen=True, slots=True)
class WireMessage:
    """An encoded message: SQS/SNS body text, attributes, and its size as SQS counts it."""

    body: str
    attributes: dict[str, dict[str, str]]
    size: int


def valid_attribute(name: str, value: str) -> bool:
    """Whether SQS/SNS take ``name: value`` as a message attribute (else it is packed)."""
    if _ATTR_NAME.fullmatch(name) is None or ".." in name or name.lower().startswith(("aws.", "amazon.")):
        return False
    return bool(value) and _INVALID_TEXT.search(value) is None


def encode_message(body: bytes, headers: Mapping[str, str], key: str | None) -> WireMessage:
    """Encode one message. Pure, thread-safe; never drops a header.

    Attribute slots go, in this order, to the user's headers (in their order), the
    CloudEvents attributes, ``traceparent``/``tracestate``, then messagebus's own headers and
    the key; one slot holds the packed rest when anything does not fit."""
    internal: dict[str, str] = {}
    text: str | None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not text or _INVALID_TEXT.search(text) is not None:
        # Empty bodies are refused by SQS/SNS, so they are base64 too, with a placeholder.
        text = base64.b64encode(body).decode("ascii") or "="
        internal[BODY_ENCODING] = "base64"
    all_headers = dict(headers)
    if key is not None:
        all_headers[h.KEY] = key
    ordered = [n for n in all_headers if not n.startswith(_ENVELOPE_PREFIXES) and n not in _TRACE]
    ordered += [n for n in _PRIORITY if n in all_headers]
    ordered += [n for n in _TRACE if n in all_headers]
    seen = set(ordered)
    ordered += [n for n in all_headers if n not in seen]
    eligible = [n for n in ordered if valid_attribute(n, all_headers[n])]
    slots = MAX_ATTRIBUTES - len(internal)
    if len(eligible) < len(ordered) or len(eligible) > slots:
        slots -= 1  # one slot holds the packed rest
    native = eligible[:slots]
    packed = {n: all_headers[n] for n in ordered if n not in set(native)}
    values = {**{n: all_headers[n] for n in native}, **internal}
    attributes = {n: {"DataType": _STRING, "StringValue": v} for n, v in values.items()}
    if packed:
        attributes[PACKED] = {"DataType": _STRING, "StringValue": json.dumps(packed, separators=(",", ":"))}
    size = len(text.encode()) + sum(
        len(n.encode()) + len(_STRING) + len(a["StringValue"].encode()) for n, a in attributes.items()
    )
    return WireMessage(text, attributes, size)


def _attribute_text(attr: Mapping[str, Any]) -> str | None:
    if "StringValue" in attr:
        return str(attr["StringValue"])
    if "BinaryValue" in attr:
        value = attr["BinaryValue"]
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(bytes(value)).decode("ascii")
    return None


def _sns_envelope(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SNS notification a non-raw subscription wrapped the body in, or ``None``. Only a
    message with no SQS attributes can be one: SNS puts them inside, and every message
    messagebus sends has some."""
    text = message.get("Body")
    if message.get("MessageAttributes") or not isinstance(text, str) or '"Notification"' not in text:
        return None
    with contextlib.suppress(ValueError):
        note = json.loads(text)
        if (
            isinstance(note, dict)
            and note.get("Type") == "Notification"
            and isinstance(note.get("Message"), str)
            and isinstance(note.get("MessageAttributes", {}), dict)
        ):
            return note
    return None


def decode_message(message: Mapping[str, Any]) -> tuple[bytes, dict[str, str], str | None]:
    """Decode an SQS message dict into ``(body, headers, key)``.

    Reads an SNS notification envelope (non-raw delivery) as the message it wraps. Foreign
    messages decode to their body text and their attributes (String, Number, and Binary as
    base64 text); CloudEvents attribute names are matched in any case, a ``content-type``
    attribute is the data content type, and without ``ce-id``/``ce-time`` the broker's
    message id and time (SNS's for an envelope, else SQS's ``SentTimestamp``) stand in.
    Raises :class:`DecodeError` only if our own packing is corrupt.
    """
    note = _sns_envelope(message)
    time: datetime | float | None = None
    if note is not None:
        text, native_id, attrs = note["Message"], str(note.get("MessageId", "")), note.get("MessageAttributes") or {}
        # SNS's attributes are {"Type": ..., "Value": text}, a Binary value already base64.
        values = {n: a.get("Value") if isinstance(a, dict) else None for n, a in attrs.items()}
        attributes = {n: v for n, v in values.items() if isinstance(v, str)}
        with contextlib.suppress(ValueError, TypeError):
            time = datetime.fromisoformat(note.get("Timestamp", ""))
    else:
        text, native_id = str(message.get("Body", "")), str(message.get("MessageId", ""))
        raw_attrs: Mapping[str, Mapping[str, Any]] = message.get("MessageAttributes") or {}
        attributes = {n: v for n, a in raw_attrs.items() if (v := _attribute_text(a)) is not None}
        sent = str((message.get("Attributes") or {}).get("SentTimestamp", ""))  # epoch ms
        time = int(sent) / 1000 if sent.isdigit() else None
    headers: dict[str, str] = {}
    encoding = attributes.pop(BODY_ENCODING, None)
    packed_text = attributes.pop(PACKED, None)
    for name, value in attributes.items():
        lowered = name.lower()
        if lowered.startswith(h.CE_PREFIX) or lowered == _CONTENT_TYPE:
            # The bindings' names are case-insensitive; a user's header cannot take them.
            headers.setdefault(h.CE_CONTENT_TYPE if lowered == _CONTENT_TYPE else lowered, value)
        else:
            headers[name] = value
    if packed_text is not None:
        try:
            packed = json.loads(packed_text)
        except ValueError as exc:
            raise DecodeError(f"attribute {PACKED!r} is not valid JSON") from exc
        if isinstance(packed, dict):
            headers.update({str(k): v for k, v in packed.items() if isinstance(v, str)})
    if encoding == "base64":
        try:
            body = base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"body marked {BODY_ENCODING}=base64 is not base64") from exc
    else:
        body = text.encode("utf-8")
    key = headers.pop(h.KEY, None)
    return body, dict(h.with_broker_defaults(headers, native_id, time)), key
